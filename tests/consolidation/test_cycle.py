"""One sleep cycle end to end on a tiny random model, real sft, real lm-eval, on SQLite and PostgreSQL:
what each outcome looks like in the result, the registry, the store, the run tables and the run folder,
and what a holder does when its run is taken over while it is inside a stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from agent_sleep.consolidation import faults, owners
from agent_sleep.consolidation.cycle import run_cycle
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.errors import ConfigError
from tests.consolidation.conftest import AGENT, World, fast_config
from tests.consolidation.planner import simple_planner


def cycle(world: World, **kwargs: Any) -> Any:
    kwargs.setdefault("config", fast_config())
    return run_cycle(AGENT, runtime=world.runtime, planner=simple_planner, **kwargs)


def test_a_cycle_promotes_what_the_gate_admits_and_records_why(world: World) -> None:
    taught = world.teach("capitals", 6)
    low = world.log("What is the capital of France?", "No idea.", skill="capitals", score=0.1)
    lines: list[str] = []
    result = cycle(world, progress=lines.append)

    assert result.outcome == "promoted" and result.status == "finished" and result.error is None
    live = world.registry.live(AGENT)
    assert live is not None and result.deployed_stack == live.stack.name and live.run_id == result.run_id
    assert world.runtime.live(AGENT).deployment.seq == live.seq  # the runtime switched, no restart
    (skill,) = result.skills
    assert (skill.skill, skill.generator, skill.status, skill.adapter) == ("capitals", "sft", "admitted", "capitals@v1")
    assert (skill.train_items, skill.probes, skill.generator_version) == (4, 2, "1")
    roles = {c.suite: c.role for c in skill.comparisons}
    assert roles == {"target_capitals": "target", "guards_general": "guard", "guards_helpdesk": "guard",
                     "guards_instructions": "guard"}  # fmt: skip
    target = next(c for c in skill.comparisons if c.role == "target")
    assert target.delta > 0 and target.ci_low > 0 and target.n == 2
    assert list(result.stages) == ["select", "generate", "evaluate", "deploy"]
    assert result.selection["score"] == {"kept": 6, "dropped": 1}
    assert any(line.startswith("evaluate: capitals@v1 admitted") for line in lines)

    # The signal is consumed: the taught episodes, not the one the selection dropped.
    assert result.consumed == {"episodes": 6, "documents": 0}
    assert {e.id for e in world.store.episodes(agent=AGENT, unconsolidated=True)} == {low}
    assert {world.store.get_episode(e).consolidation_run for e in taught} == {result.run_id}
    # The version carries its probes and the gate's numbers, for later runs' interference suites.
    summary = world.registry.get("capitals@v1").eval_summary
    assert len(summary["probes"]) == 2 and summary["gate"]["status"] == "admitted"

    # The run tables and the run folder.
    runs = RunStore(world.store)
    run = runs.get(result.run_id)
    assert (run.status, run.outcome, run.deployed_stack, run.summary["outcome"]) == \
        ("finished", "promoted", live.stack.name, "promoted")  # fmt: skip
    assert {s: st.status for s, st in runs.stages(run.id).items()} == dict.fromkeys(result.stages, "done")
    why = {d.item_id: (d.selector, d.kept) for d in runs.decisions(run.id) if not d.kept}
    assert why == {low: ("score", False)}
    folder = Path(result.folder)
    report = json.loads((folder / "report.json").read_text())
    assert report["result"]["outcome"] == "promoted" and report["evaluation"]["accuracy"]["capitals@v1"]
    md = (folder / "report.md").read_text()
    assert "| capitals | sft 1 | capitals@v1 | - | 4 | 2 | admitted |" in md
    assert "| target_capitals | target | 2 | 0.000 | 1.000 | +1.000 | +1.000 .. +1.000 | yes |" in md
    assert {p.name for p in (folder / "eval" / "tasks").glob("*.yaml")} >= {"target_capitals.yaml",
                                                                             "guards_general.yaml"}  # fmt: skip
    saved = json.loads((folder / "eval" / "results" / "capitals@v1.json").read_text())
    assert len(saved["samples"]["target_capitals"]) == 2  # lm-eval's samples are kept with the run

    # Nothing new: no signal, nothing trained. Then a new skill is gated against the live one too.
    quiet = cycle(world)
    assert quiet.outcome == "no_signal" and quiet.skills == [] and list(quiet.stages) == ["select"]
    # A new version that forgets what the live one knew is stopped by the interference suite.
    world.teach("capitals", 6, answer="hello world.", expected="hello world.")
    second = cycle(world)
    assert second.outcome == "rejected_by_gate" and second.incumbent_stack == live.stack.name
    (v2,) = second.skills
    assert (v2.adapter, v2.replaces, v2.status) == ("capitals@v2", "capitals@v1", "rejected")
    by_role = {c.role: c for c in v2.comparisons}
    assert by_role["target"].delta > 0 and by_role["interference"].suite == "live_capitals"
    assert (by_role["interference"].baseline, by_role["interference"].passed) == (1.0, False)
    assert [i.adapter for i in world.registry.live(AGENT).stack.items] == ["capitals@v1"]
    assert result == cycle(world, resume=result.run_id)  # a finished run is handed back as it was


def test_wrong_material_is_rejected_by_the_gate_and_consumed(world: World) -> None:
    taught = world.teach("capitals", 6, answer="hello world.")  # the probes expect "Paris."
    result = cycle(world)
    assert result.outcome == "rejected_by_gate" and result.deployed_stack is None
    (skill,) = result.skills
    assert skill.status == "rejected" and any("below the required gain" in r for r in skill.reasons)
    rec = world.registry.get("capitals@v1")
    assert rec.status == "rejected" and rec.rejection is not None and rec.rejection.check == "gate"
    assert rec.status_detail["policy"]["min_target_gain"] == 0.05 and "rejected by the gate" in rec.status_reason
    assert world.registry.live(AGENT) is None
    assert result.consumed["episodes"] == 6 and not world.store.episodes(agent=AGENT, unconsolidated=True)
    assert len(taught) == 6


@pytest.mark.parametrize("n", [0, 1, 2])
def test_empty_and_tiny_experience_sets_have_no_signal(world: World, n: int) -> None:
    world.store.ensure_agent(AGENT)
    world.teach("capitals", n) if n else None
    world.log("hello", "", skill="capitals")  # no answer: dropped
    result = run_cycle(AGENT, registry=world.registry, planner=simple_planner, config=fast_config())
    assert result.outcome == "no_signal" and result.consumed == {"episodes": 0, "documents": 0}
    assert world.registry.adapters() == [] and list(result.stages) == ["select"]
    assert len(world.store.episodes(agent=AGENT, unconsolidated=True)) == n + 1  # kept for a later cycle
    if n:
        (skill,) = result.skills
        assert skill.status == "skipped" and "held-out probe(s); the gate needs at least 2" in skill.reasons[0]
        decisions = RunStore(world.store).decisions(result.run_id)
        assert sum(d.selector == "consolidation" and not d.kept for d in decisions) == n


def test_lm_eval_raising_fails_closed(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import lm_eval

    real, calls = lm_eval.simple_evaluate, []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the candidate's evaluation
            raise RuntimeError("task target_capitals: dataset generation failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", flaky)
    world.teach("capitals", 6)
    result = cycle(world)
    assert result.outcome == "failed" and result.deployed_stack is None
    assert "evaluate: EvaluationError" in result.error and "dataset generation failed" in result.error
    assert world.registry.live(AGENT) is None and world.registry.get("capitals@v1").status != "live"
    assert len(world.store.episodes(agent=AGENT, unconsolidated=True)) == 6  # nothing consumed
    stages = RunStore(world.store).stages(result.run_id)
    assert stages["evaluate"].status == "failed" and "deploy" not in stages
    assert RunStore(world.store).get(result.run_id).outcome == "failed"
    assert (Path(result.folder) / "report.md").read_text().count("**failed**") == 1


def test_a_generator_making_non_finite_weights_is_rejected_and_recorded(world: World) -> None:
    from agent_sleep.generators.registry import _TARGETS, register_generator
    from agent_sleep.generators.sft import SFTGenerator, SFTSettings

    class Poisoned(SFTGenerator):
        """TEST CODE: sft whose weights come out NaN, as a diverged run's would."""

        name = "poisoned"

        def generate(self, request: Any) -> Any:
            result = super().generate(request)
            for tensor in result.tensors.values():
                tensor.fill_(float("nan"))
            return result

    register_generator("poisoned", lambda handle, **_: Poisoned(handle, config=SFTSettings(max_steps=2)))
    try:
        world.teach("capitals", 6)
        result = cycle(world, config=fast_config(selection={"generator": "poisoned"}))
    finally:
        _TARGETS.pop("poisoned")
    assert result.outcome == "rejected_by_gate" and result.deployed_stack is None
    (skill,) = result.skills
    assert skill.status == "invalid" and "finite" in skill.reasons[0] and skill.comparisons == []
    rec = world.registry.get("capitals@v1")
    assert rec.status == "rejected" and rec.rejection.kind == "integrity" and rec.rejection.check == "finite"
    assert not (Path(result.folder) / "eval").exists()  # no evaluation time spent on it


def _dead_url(world: World, tmp_path: Path) -> str:
    if world.store.dialect == "postgresql":
        return "postgresql+psycopg://postgres@127.0.0.1:1/gone"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return f"sqlite:///{blocker}/db.sqlite"  # a path under a regular file: cannot be opened


def test_the_database_going_away_mid_run_leaves_it_resumable(world: World, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    good = world.store._sessions
    dead = sessionmaker(create_engine(_dead_url(world, tmp_path)), expire_on_commit=False)

    def outage(point: str) -> None:
        if point == "generate:after_write":
            world.store._sessions = dead

    monkeypatch.setattr(faults, "fault_point", outage)
    world.teach("capitals", 6)
    broken = cycle(world)
    assert broken.status == "running" and broken.outcome == "failed" and "unreachable during generate" in broken.error
    world.store._sessions = good  # the database is back
    run = RunStore(world.store).get(broken.run_id)
    assert (run.status, run.stage) == ("running", "generate")
    assert world.registry.adapters() == []

    monkeypatch.setattr(faults, "fault_point", lambda point: None)
    # The next cycle for the agent takes the run over, with the config the run started with (not this budget).
    result = cycle(world, config=fast_config(budget_seconds=0.001))
    assert result.run_id == broken.run_id and result.resumed and result.outcome == "promoted"
    assert [a.name for a in world.registry.adapters()] == ["capitals@v1"]
    assert RunStore(world.store).stages(run.id)["generate"].attempt == 2


def _rows(runs: RunStore, run_id: str) -> tuple[Any, ...]:
    """All the run tables hold about one run."""
    return runs.get(run_id), runs.stages(run_id), runs.decisions(run_id)


def test_a_holder_whose_run_is_resumed_elsewhere_mid_stage_stops_and_writes_nothing(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The scheduler's flow: this holder's lease expires inside ``select``; the next worker declares the run
    orphaned and resumes it to the end while this one is still in the stage. Its stage result is refused."""
    world.teach("capitals", 6)
    runs = RunStore(world.store)
    fired: list[bool] = []
    new: dict[str, Any] = {}

    def resumed_elsewhere(point: str) -> None:
        if point == "select:after_plan" and not fired:  # once: the new holder passes this point too
            fired.append(True)
            (run,) = runs.runs(agent=AGENT)
            runs.orphan(run.id)
            new["result"] = cycle(world, resume=run.id)
            new["rows"] = _rows(runs, run.id)

    monkeypatch.setattr(faults, "fault_point", resumed_elsewhere)
    stale = cycle(world)
    taken, run = new["result"], runs.get(stale.run_id)
    assert (taken.run_id, taken.resumed, taken.outcome) == (run.id, True, "promoted")
    assert (stale.outcome, stale.status, stale.resumed, stale.stages) == ("failed", "running", False, {})
    assert stale.error.startswith(f"run {run.id} was taken over by {run.owner} and has ended (promoted): the "
                                  "result of the select stage by ")  # fmt: skip
    assert _rows(runs, run.id) == new["rows"]  # nothing of the stale holder's: no select result, no failure, no finish
    assert (run.status, run.outcome, run.summary["run_id"]) == ("finished", "promoted", run.id)
    assert runs.stages(run.id)["select"].attempt == 2  # the new holder did select again: the stale one never did
    assert [a.name for a in world.registry.adapters()] == ["capitals@v1"]
    assert [d.run_id for d in world.registry.deployments(AGENT)] == [run.id]


def test_a_holder_whose_run_is_taken_over_mid_stage_leaves_it_to_the_new_owner(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Taken over inside ``generate`` by an owner still at work: the stale holder's next progress save is
    refused, it stops without marking the stage failed, and the run, once its new owner is gone, is resumed
    and finished with the adapter the stale holder registered."""
    world.teach("capitals", 6)
    runs = RunStore(world.store)
    other = owners.new_owner()  # alive: this process, an active token, a fresh heartbeat
    left: list[Any] = []

    def taken_over(point: str) -> None:
        if point == "generate:after_register" and not left:
            (run,) = runs.runs(agent=AGENT)
            runs.orphan(run.id)
            claim = runs.claim(AGENT, owner=other, config={}, folder=lambda rid: "/unused", alive=lambda r: False)
            assert (claim.kind, claim.run.id) == ("resumed", run.id)
            runs.begin_stage(run.id, "generate", owner=other)
            left.append(_rows(runs, run.id))

    monkeypatch.setattr(faults, "fault_point", taken_over)
    try:
        stale = cycle(world)
        assert (stale.outcome, stale.status) == ("failed", "running")
        assert stale.error.startswith(f"run {stale.run_id} was taken over by {other}: the progress of the generate "
                                      "stage by ")  # fmt: skip
        assert stale.error.endswith("; this process stopped, leaving the run to its new holder")
        assert _rows(runs, stale.run_id) == left[0]
        generate = runs.stages(stale.run_id)["generate"]
        assert (generate.status, generate.attempt, generate.result) == ("started", 2, {})  # not failed, not saved
        assert cycle(world).outcome == "skipped_overlap"  # the new owner is alive: the run stays its
    finally:
        owners.release(other)
    monkeypatch.setattr(faults, "fault_point", lambda point: None)
    result = cycle(world)  # the new owner is gone: the next cycle takes the run over and finishes it
    assert (result.run_id, result.resumed, result.outcome) == (stale.run_id, True, "promoted"), result.error
    assert [a.name for a in world.registry.adapters()] == ["capitals@v1"]  # the one the stale holder registered
    assert RunStore(world.store).stages(result.run_id)["generate"].attempt == 3


def test_a_cycle_while_another_is_alive_is_skipped_and_recorded(world: World, tmp_path: Path) -> None:
    world.teach("capitals", 6)
    runs = RunStore(world.store)
    owner = owners.new_owner()  # alive: this process, an active token, a fresh heartbeat
    try:
        busy = runs.claim(AGENT, owner=owner, config={}, folder=lambda rid: str(tmp_path / "runs" / rid),
                          alive=lambda r: True).run
        skipped = cycle(world)
        assert skipped.outcome == "skipped_overlap" and busy.id in skipped.error
        assert runs.get(skipped.run_id).outcome == "skipped_overlap"
    finally:
        owners.release(owner)
    finished = cycle(world)  # the owner is gone: its run is taken over and finished
    assert finished.run_id == busy.id and finished.outcome == "promoted"


def test_the_time_budget_bounds_a_run(world: World) -> None:
    world.teach("capitals", 6)
    result = cycle(world, config=fast_config(budget_seconds=0.001))
    assert result.outcome == "failed" and "time budget" in result.error
    assert result.skills[0].status == "skipped" and world.registry.adapters() == []
    assert len(world.store.episodes(agent=AGENT, unconsolidated=True)) == 6


def test_a_config_for_another_agent_is_refused(world: World) -> None:
    with pytest.raises(ConfigError, match="for agent 'billing', not 'helpdesk'"):
        cycle(world, config=fast_config(agent="billing"))
    assert RunStore(world.store).runs() == []


def test_candidate_weights_are_tried_in_order_until_one_is_admitted(world: World) -> None:
    world.teach("capitals", 6, answer="hello world.")  # wrong material: no weight can help
    result = cycle(world, config=fast_config(evaluation={"guard_limit": 3, "max_new_tokens": 8,
                                                         "candidate_weights": [1.0, 0.5]}))  # fmt: skip
    (skill,) = result.skills
    assert skill.status == "rejected" and skill.weight == 0.5
    evaluate = RunStore(world.store).stages(result.run_id)["evaluate"].result
    decided = evaluate["skills"]["capitals"]
    assert [t["weight"] for t in decided["tried"]] == [1.0, 0.5] and decided["stack"] == [["capitals@v1", 0.5]]
    assert {"capitals@v1", "capitals@v1*0.5"} <= set(evaluate["results"])  # each weight scored once
    assert "at stack weight 0.5" in (Path(result.folder) / "report.md").read_text()

    world.teach("capitals", 6)  # right material: admitted at the first weight, nothing else scored
    result = cycle(world, config=fast_config(evaluation={"guard_limit": 3, "max_new_tokens": 8,
                                                         "candidate_weights": [1.0, 0.5]}))  # fmt: skip
    (skill,) = result.skills
    assert (skill.status, skill.weight) == ("admitted", 1.0) and result.deployed_stack is not None
    decided = RunStore(world.store).stages(result.run_id)["evaluate"].result["skills"]["capitals"]
    assert [t["weight"] for t in decided["tried"]] == [1.0]


@pytest.mark.parametrize("weights", [[], [0.0], [1.0, 1.0], [5.0]])
def test_bad_candidate_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(ValidationError, match="candidate_weights"):
        fast_config(evaluation={"candidate_weights": weights})


def test_routing_writes_keys_and_the_gate_scores_routed_items_as_the_stack_it_joins(world: World) -> None:
    from tests.runtime.test_routing import WordEmbedder

    from agent_sleep.runtime.routing import Router

    world.runtime.router = Router(WordEmbedder())
    world.teach("capitals", 6)
    # the generator's own threshold wins over the general one (a general 0.9 would not fire on the guards' items)
    result = cycle(world, config=fast_config(routing={"threshold": 0.9, "thresholds": {"sft": 0.6}}))
    (skill,) = result.skills
    spec = world.runtime.routing(skill.adapter)
    assert spec is not None and spec.keys == ["What is the capital of France?"] and spec.threshold == 0.6
    decided = RunStore(world.store).stages(result.run_id)["evaluate"].result["skills"]["capitals"]
    routed = decided["routed"]
    assert routed["target_capitals"] == {"fired": 2, "items": 2}  # the probes ask the taught question
    assert all(0 <= r["fired"] <= r["items"] == 3 for n, r in routed.items() if n.startswith("guards_"))
    # where it does not fire, the candidate scores exactly as the stack it joins (here the base model)
    for comparison in skill.comparisons:
        if comparison.role == "guard" and routed[comparison.suite]["fired"] == 0:
            assert comparison.delta == 0.0
    assert skill.routed == routed  # in sleep --json / runs show, and in the report
    report = (Path(result.folder) / "report.md").read_text()
    assert "- routed: applied only to requests like its training material; it fired on " in report
    assert "2/2 of target_capitals" in report


def test_routed_skills_of_one_group_are_scored_one_at_a_time(world: World) -> None:
    """With ``exclusive`` naming the generator, the night's adapters share a routing group: on every item only
    the closest one applies, so the stack of both is never what an item is scored by (threshold 0: both fire
    everywhere), and each adapter alone is."""
    from tests.runtime.test_routing import WordEmbedder

    from agent_sleep.adapters.stack import stack_label
    from agent_sleep.runtime.routing import Router

    world.runtime.router = Router(WordEmbedder())
    config = fast_config(routing={"threshold": 0.0, "exclusive": ["sft"]})
    world.teach("capitals", 6)
    first = cycle(world, config=config)
    assert first.skills[0].status == "admitted" and first.deployed_stack is not None
    capitals = first.skills[0].adapter
    spec = world.runtime.routing(capitals)
    assert spec is not None and spec.group == "sft"
    world.teach("weather", 6)
    second = cycle(world, config=config)
    weather = second.skills[0].adapter
    results = RunStore(world.store).stages(second.run_id)["evaluate"].result["results"]
    assert stack_label([(capitals, 1.0), (weather, 1.0)]) not in results
    assert stack_label([(weather, 1.0)]) in results and stack_label([(capitals, 1.0)]) in results
    assert world.runtime.routing(weather).group == "sft"
    plain = fast_config(routing={"threshold": 0.6})
    assert plain.routing is not None and plain.routing.exclusive == ("d2l",)  # only document adapters compete


def test_a_stack_of_routed_skills_is_scored_as_the_runtime_runs_it(world: World) -> None:
    """Night 2's candidate joins a stack holding night 1's routed skill: each item is scored by the adapters that
    apply to its question (here: the new skill alone on its probes, the base model where neither fires), not by
    the whole stack as if both always ran."""
    from tests.runtime.test_routing import WordEmbedder

    from agent_sleep.adapters.stack import stack_label
    from agent_sleep.runtime.routing import Router

    world.runtime.router = Router(WordEmbedder())
    config = fast_config(routing={"threshold": 0.7})
    world.teach("capitals", 6)
    first = cycle(world, config=config)
    assert first.skills[0].status == "admitted" and first.deployed_stack is not None
    world.teach("weather", 6)
    second = cycle(world, config=config)
    (skill,) = second.skills
    evaluate = RunStore(world.store).stages(second.run_id)["evaluate"].result
    results = evaluate["results"]
    capitals, weather = first.skills[0].adapter, skill.adapter
    alone, base = stack_label([(weather, 1.0)]), stack_label([])
    assert alone in results and base in results  # the sub-stacks the items actually run on were scored
    fired = evaluate["skills"]["weather"]["routed"]
    assert fired["target_weather"] == {"fired": 2, "items": 2}
    for comparison in skill.comparisons:  # on the probes only the new skill applies: scored by it alone
        if comparison.suite == "target_weather":
            scores = results[alone]["target_weather"]["scores"]
            assert comparison.candidate == pytest.approx(sum(scores.values()) / len(scores))
    assert stack_label([(capitals, 1.0), (weather, 1.0)]) not in results or any(
        r["fired"] for n, r in fired.items() if n != "target_weather")  # the full stack only where both fire
