"""The report's data: real cycles on the tiny model (SQLite and PostgreSQL), read back by ``collect_report``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from agent_sleep.consolidation import faults
from agent_sleep.consolidation.cycle import run_cycle
from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.reports import collect_report
from tests.consolidation.conftest import AGENT, World, fast_config
from tests.consolidation.planner import simple_planner
from tests.reports.conftest import HISTORY
from tests.reports.history import ROLLBACK_ACTOR, ROLLBACK_REASON, seed_history

GUARDS = {"guards_general", "guards_helpdesk", "guards_instructions"}


def test_the_report_reads_every_cycle_from_the_run_tables_and_the_registry(world: World) -> None:
    results = seed_history(world, HISTORY)
    cycles = [r for r in results if isinstance(r, CycleResult)]
    report = collect_report(world.store)
    (agent,) = report.agents
    assert agent.agent == AGENT and report.agent is None and not report.empty

    # Runs: one per cycle, oldest first, with each stage's seconds as the run tables hold them.
    assert [r.run_id for r in agent.runs] == [c.run_id for c in cycles]
    assert [r.cycle for r in agent.runs] == [1, 2, 3, 4, 5]
    assert [r.outcome for r in agent.runs] == ["promoted", "no_signal", "rejected_by_gate", "promoted",
                                               "rejected_by_gate"]  # fmt: skip
    assert agent.outcomes == {"promoted": 2, "no_signal": 1, "rejected_by_gate": 2}
    runs = RunStore(world.store)
    for point, result in zip(agent.runs, cycles, strict=True):
        rows = runs.stages(result.run_id)
        assert [(s.stage, s.seconds, s.attempt) for s in point.stages] == \
            [(name, st.seconds, st.attempt) for name, st in rows.items()]  # fmt: skip
        assert [s.stage for s in point.stages] == list(result.stages)
        # Selection counts come from selection_decisions, and agree with what the run summed as it went.
        counted = Counter((d.selector, d.kept) for d in runs.decisions(result.run_id))
        assert {c.selector: (c.kept, c.dropped) for c in point.selection} == \
            {s: (counted[(s, True)], counted[(s, False)]) for s, _ in counted}  # fmt: skip
        assert {c.selector: {"kept": c.kept, "dropped": c.dropped} for c in point.selection} == result.selection
        assert point.deployed_stack == result.deployed_stack and point.skills == {s.skill: s.status for s in
                                                                                  result.skills}  # fmt: skip
    assert agent.runs[2].incumbent_stack == "helpdesk:stack@v1"  # capitals was live when weather@v1 was judged
    assert [s.stage for s in agent.runs[1].stages] == ["select"]

    # Gate deltas: every comparison of every judged skill, with its interval, from the run summaries.
    expected = [(c.run_id, s.skill, d.suite, d.role, d.delta, d.ci_low, d.ci_high, d.passed)
                for c in cycles for s in c.skills for d in s.comparisons]  # fmt: skip
    got = [(g.run_id, g.skill, g.suite, g.role, g.delta, g.ci_low, g.ci_high, g.passed) for g in agent.gate]
    assert got == expected
    assert {g.source for g in agent.gate} == {"summary"}
    assert {g.role for g in agent.gate} == {"target", "guard", "interference"}
    series = {s.skill: [(p.cycle, p.adapter, p.verdict) for p in s.points] for s in agent.skills}
    assert series == {"capitals": [(1, "capitals@v1", "admitted")],
                      "weather": [(3, "weather@v1", "rejected"), (4, "weather@v2", "admitted"),
                                  (5, "weather@v3", "rejected")]}  # fmt: skip
    first = agent.skills[0].points[0]
    assert first.baseline < first.candidate and first.ci_low <= first.delta <= first.ci_high

    # Guard scores: the live stack and each candidate, per guard suite, as the evaluate stage scored them.
    by_run: dict[int, set[tuple[str, str, str]]] = {}
    for g in agent.guards:
        by_run.setdefault(g.cycle, set()).add((g.stack_role, g.stack, g.suite))
    assert set(by_run) == {1, 3, 4, 5}  # the no_signal run scored nothing
    assert by_run[1] == {(role, stack, s) for role, stack in (("live", "base"), ("candidate", "capitals@v1"))
                         for s in GUARDS}  # fmt: skip
    assert {(r, st) for r, st, _ in by_run[3]} == {("live", "capitals@v1"), ("candidate", "capitals@v1+weather@v1")}
    evaluate = runs.stages(cycles[0].run_id)["evaluate"].result
    g = next(g for g in agent.guards if (g.cycle, g.stack_role, g.suite) == (1, "candidate", "guards_general"))
    assert (g.accuracy, g.n) == (evaluate["results"]["capitals@v1"]["guards_general"]["metrics"]["accuracy"],
                                 evaluate["results"]["capitals@v1"]["guards_general"]["samples"])  # fmt: skip

    # The deployment timeline, with the rollback marked and its actor and reason as they were given.
    deps = world.registry.deployments(AGENT)
    assert [(d.seq, d.kind, d.stack, d.cycle, d.rollback) for d in agent.deployments] == [
        (1, "deploy", "helpdesk:stack@v1", 1, False), (2, "remove_skill", "helpdesk:stack@v2", None, False),
        (3, "deploy", "helpdesk:stack@v3", 4, False), (4, "rollback", "helpdesk:stack@v2", None, True)]
    assert [(d.actor, d.reason, d.at) for d in agent.deployments] == \
        [(d.actor, d.reason, d.created_at.replace(microsecond=0)) for d in deps]  # fmt: skip
    assert (agent.deployments[-1].actor, agent.deployments[-1].reason) == (ROLLBACK_ACTOR, ROLLBACK_REASON)
    assert agent.deployments[2].adapters == ["weather@v2"] and agent.deployments[1].adapters == []
    assert agent.live_stack == world.registry.live(AGENT).stack.name == "helpdesk:stack@v2"
    reply, score, split = agent.selection  # summed over the runs, in the order the planner decides
    assert [c.selector for c in agent.selection] == ["reply", "score", "split"] and reply.dropped == split.dropped == 0
    # Each badly scored answer is dropped by every run that sees it (nothing consumes it), the 24 others once.
    assert split.kept == score.kept == 24 and score.dropped >= 4 and reply.kept == score.kept + score.dropped

    # One run: its rows only, its cycle number kept, the deployment it made.
    one = collect_report(world.store, run=cycles[3].run_id[:8])
    (only,) = one.agents
    assert one.run == cycles[3].run_id and one.agent == AGENT
    assert [r.cycle for r in only.runs] == [4] and {g.cycle for g in only.gate} == {4}
    assert [d.seq for d in only.deployments] == [3]
    assert collect_report(world.store, agent=AGENT).agents == report.agents


def test_unknown_names_are_refused_with_a_suggestion(world: World) -> None:
    world.teach("capitals", 2)
    with pytest.raises(NotFoundError, match="no agent named 'helpdsk'; did you mean 'helpdesk'"):
        collect_report(world.store, agent="helpdsk")
    with pytest.raises(NotFoundError, match="no consolidation run 'nope'"):
        collect_report(world.store, run="nope")
    result = run_cycle(AGENT, runtime=world.runtime, planner=simple_planner, config=fast_config())
    world.store.ensure_agent("billing")
    with pytest.raises(InvalidInputError, match=f"run {result.run_id} belongs to agent 'helpdesk', not 'billing'"):
        collect_report(world.store, agent="billing", run=result.run_id)


def test_no_history_is_an_empty_report(world: World) -> None:
    assert collect_report(world.store).empty and collect_report(world.store).agents == []
    world.teach("capitals", 2)  # an agent that only logged experiences has no history yet
    assert collect_report(world.store).agents == []
    named = collect_report(world.store, agent=AGENT)
    assert named.empty and [a.agent for a in named.agents] == [AGENT] and named.agents[0].runs == []


def _dead_url(world: World, tmp_path: Path) -> str:
    if world.store.dialect == "postgresql":
        return "postgresql+psycopg://postgres@127.0.0.1:1/gone"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return f"sqlite:///{blocker}/db.sqlite"


def test_a_run_still_going_shows_the_gate_decisions_it_saved(world: World, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    good = world.store._sessions
    dead = sessionmaker(create_engine(_dead_url(world, tmp_path)), expire_on_commit=False)

    def outage(point: str) -> None:
        if point == "evaluate:after_decision":  # the decision is saved; the database goes before the run ends
            world.store._sessions = dead

    monkeypatch.setattr(faults, "fault_point", outage)
    world.teach("capitals", 6)
    broken = run_cycle(AGENT, runtime=world.runtime, planner=simple_planner, config=fast_config())
    world.store._sessions = good
    assert broken.status == "running"
    (agent,) = collect_report(world.store).agents
    (run,) = agent.runs
    assert (run.status, run.outcome, run.ended_at, run.seconds) == ("running", None, None, None)
    assert agent.outcomes == {"running": 1} and run.skills == {"capitals": "admitted"}
    assert [s.stage for s in run.stages] == ["select", "generate", "evaluate"] and run.stages[-1].status == "started"
    assert {g.source for g in agent.gate} == {"stage"} and {g.suite for g in agent.gate} >= {"target_capitals"}
    assert {g.stack_role for g in agent.guards} == {"live", "candidate"}
    assert run.incumbent_stack is None and agent.deployments == []
