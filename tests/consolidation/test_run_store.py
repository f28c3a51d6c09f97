"""The run tables on SQLite and PostgreSQL: claims (new, overlap, take-over, resume), stages with attempts,
decisions replaced as a whole, finishing, lookups by id prefix, and writes fenced by the run's owner."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from agent_sleep.consolidation.runs import RunRecord, RunStore
from agent_sleep.errors import InvalidInputError, NotFoundError, RunTakenOverError


def _claim(runs: RunStore, owner: str, *, alive: bool = True, resume: str | None = None, agent: str = "helpdesk"
           ) -> Any:  # fmt: skip
    return runs.claim(agent, owner=owner, config={"budget_seconds": 60}, folder=lambda rid: f"/runs/{rid}",
                      alive=lambda _run: alive, resume=resume)  # fmt: skip


def test_one_running_run_per_agent_and_a_dead_one_is_taken_over(store: Any) -> None:
    runs = RunStore(store)
    first = _claim(runs, "host:1:a")
    assert first.kind == "new" and first.run.status == "running" and first.run.folder == f"/runs/{first.run.id}"
    second = _claim(runs, "host:2:b", alive=True)
    assert second.kind == "skipped" and second.blocking.id == first.run.id
    assert second.run.outcome == "skipped_overlap" and second.run.status == "finished"
    assert first.run.id in second.run.error and "stage starting" in second.run.error
    other_agent = _claim(runs, "host:2:b", agent="billing")
    assert other_agent.kind == "new"  # agents do not block each other
    taken = _claim(runs, "host:3:c", alive=False)
    assert taken.kind == "resumed" and taken.run.id == first.run.id and taken.run.owner == "host:3:c"
    assert runs.heartbeat(first.run.id, "host:3:c") and not runs.heartbeat(first.run.id, "host:1:a")
    runs.finish(first.run.id, "no_signal", owner="host:3:c", summary={"x": 1})
    assert _claim(runs, "host:4:d").kind == "new"  # a finished run blocks nothing
    assert [r.outcome for r in runs.runs(agent="helpdesk")] == [None, "skipped_overlap", "no_signal"]  # newest first


def test_resume_names_one_run(store: Any) -> None:
    runs = RunStore(store)
    run = _claim(runs, "h:1:a").run
    assert _claim(runs, "h:2:b", resume=run.id[:6], alive=True).kind == "skipped"
    resumed = _claim(runs, "h:2:b", resume=run.id[:6], alive=False)
    assert (resumed.kind, resumed.run.id) == ("resumed", run.id)
    runs.finish(run.id, "promoted", owner="h:2:b", summary={"outcome": "promoted"}, deployed_stack="helpdesk:stack@v1")
    done = _claim(runs, "h:3:c", resume=run.id)
    assert done.kind == "finished" and done.run.deployed_stack == "helpdesk:stack@v1"
    with pytest.raises(InvalidInputError, match="belongs to agent 'helpdesk', not 'billing'"):
        _claim(runs, "h:3:c", resume=run.id, agent="billing")
    with pytest.raises(NotFoundError, match="no consolidation run 'nope'"):
        _claim(runs, "h:3:c", resume="nope")


def test_concurrent_claims_start_exactly_one_run(store: Any) -> None:
    runs = RunStore(store)
    kinds: list[str] = []
    barrier = threading.Barrier(4)

    def go(n: int) -> None:
        barrier.wait()
        kinds.append(_claim(runs, f"h:{n}:x", alive=True).kind)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(kinds) == ["new", "skipped", "skipped", "skipped"]


def test_stages_keep_progress_count_attempts_and_stay_done(store: Any) -> None:
    runs = RunStore(store)
    run = _claim(runs, "h:1:a").run
    st = runs.begin_stage(run.id, "generate", owner="h:1:a")
    assert (st.status, st.attempt, st.result) == ("started", 1, {})
    assert runs.get(run.id).stage == "generate"
    runs.save_progress(run.id, "generate", {"skills": {"refunds": {"status": "generated"}}}, owner="h:1:a")
    again = runs.begin_stage(run.id, "generate", owner="h:1:a")  # the process died; a rerun begins the stage again
    assert (again.attempt, again.result) == (2, {"skills": {"refunds": {"status": "generated"}}})
    runs.fail_stage(run.id, "generate", "boom", 1.5, owner="h:1:a")
    assert runs.stages(run.id)["generate"].status == "failed"
    runs.begin_stage(run.id, "generate", owner="h:1:a")
    done = runs.complete_stage(run.id, "generate", {"skills": {}}, 2.5, owner="h:1:a")
    assert (done.status, done.attempt, done.seconds) == ("done", 3, 2.5)
    assert runs.begin_stage(run.id, "generate", owner="h:1:a").attempt == 3  # done stays done
    runs.begin_stage(run.id, "select", owner="h:1:a")
    assert list(runs.stages(run.id)) == ["select", "generate"]  # in stage order
    with pytest.raises(InvalidInputError, match="stage must be one of"):
        runs.begin_stage(run.id, "sleep", owner="h:1:a")
    with pytest.raises(NotFoundError, match="has no 'deploy' stage"):
        runs.save_progress(run.id, "deploy", {}, owner="h:1:a")


def test_decisions_are_replaced_with_the_stage_and_read_per_item(store: Any) -> None:
    runs = RunStore(store)
    run = _claim(runs, "h:1:a").run
    eid = "0123456789abcdef0123456789abcdef"
    rows = [{"item_kind": "episode", "item_id": eid, "selector": "score", "kept": True, "reason": "0.9"},
            {"item_kind": "episode", "item_id": eid, "selector": "split", "kept": True, "reason": "probe",
             "skill": "refunds", "role": "probe"},
            {"item_kind": "document", "item_id": "d1", "selector": "novelty", "kept": False,
             "reason": "seen"}]  # fmt: skip
    runs.begin_stage(run.id, "select", owner="h:1:a")
    runs.complete_stage(run.id, "select", {}, 0.1, decisions=rows[:1], owner="h:1:a")
    runs.complete_stage(run.id, "select", {}, 0.1, decisions=rows, owner="h:1:a")  # a redo replaces, never doubles
    assert [d.selector for d in runs.decisions(run.id)] == ["score", "split", "novelty"]
    dashed = f"{eid[:8]}-{eid[8:12]}-{eid[12:16]}-{eid[16:20]}-{eid[20:]}"
    mine = runs.decisions(run.id, dashed.upper())  # any UUID spelling of an episode id
    assert [(d.skill, d.role) for d in mine] == [(None, None), ("refunds", "probe")]


def test_finish_and_lookup(store: Any) -> None:
    runs = RunStore(store)
    run = _claim(runs, "h:1:a").run
    with pytest.raises(InvalidInputError, match="outcome must be one of"):
        runs.finish(run.id, "great", owner="h:1:a", summary={})  # type: ignore[arg-type]
    finished = runs.finish(run.id, "failed", owner="h:1:a", summary={"error": "x"},
                           error="evaluate: EvaluationError: boom")  # fmt: skip
    assert isinstance(finished, RunRecord) and finished.ended_at is not None and finished.status == "finished"
    assert runs.get(run.id[:8]).id == run.id
    with pytest.raises(NotFoundError, match=f"did you mean '{run.id}'"):
        runs.get(run.id[:-1] + ("0" if run.id[-1] != "0" else "1"))
    assert runs.runs(agent="nobody") == [] and len(runs.runs(limit=1)) == 1


def test_stages_and_selection_counts_of_many_runs_in_one_read(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_sleep.consolidation import runs as runs_module

    runs = RunStore(store)
    ids = []
    for n in range(3):
        run = _claim(runs, f"h:{n}:a", agent=f"agent{n}").run
        ids.append(run.id)
        runs.begin_stage(run.id, "select", owner=f"h:{n}:a")
        decisions = [{"item_kind": "episode", "item_id": f"e{i}", "selector": sel, "kept": kept, "reason": "r"}
                     for i in range(n + 1) for sel, kept in (("recency", True), ("outcome", i % 2 == 0))]  # fmt: skip
        runs.complete_stage(run.id, "select", {"n": n}, 0.5 + n, decisions, owner=f"h:{n}:a")
    runs.begin_stage(ids[2], "generate", owner="h:2:a")
    real = runs_module._chunks
    monkeypatch.setattr(runs_module, "_chunks", lambda ids: real(ids, 2))  # several IN (...) reads, merged
    stages = runs.stages_of([*ids, "missing"])
    assert {r: [(s, st.status, st.seconds) for s, st in by.items()] for r, by in stages.items()} == {
        ids[0]: [("select", "done", 0.5)], ids[1]: [("select", "done", 1.5)],
        ids[2]: [("select", "done", 2.5), ("generate", "started", None)], "missing": []}
    assert stages[ids[1]]["select"] == runs.stages(ids[1])["select"]
    counts = runs.selection_counts([*ids, "missing"])
    assert counts == {ids[0]: {"recency": {"kept": 1, "dropped": 0}, "outcome": {"kept": 1, "dropped": 0}},
                      ids[1]: {"recency": {"kept": 2, "dropped": 0}, "outcome": {"kept": 1, "dropped": 1}},
                      ids[2]: {"recency": {"kept": 3, "dropped": 0}, "outcome": {"kept": 2, "dropped": 1}},
                      "missing": {}}  # fmt: skip
    assert [list(c) for c in counts.values()][:3] == [["recency", "outcome"]] * 3  # the order they first decided


def _rows(runs: RunStore, run_id: str) -> tuple[Any, ...]:
    """All the run tables hold about one run, to compare before and after a refused write."""
    return runs.get(run_id), runs.stages(run_id), runs.decisions(run_id)


OLD, NEW = "h:1:old", "h:2:new"
ROW = {"item_kind": "episode", "item_id": "e1", "selector": "score", "kept": True, "reason": "0.9"}


def _stale_writes(runs: RunStore, run_id: str) -> list[tuple[str, Callable[[], Any]]]:
    """Every fenced write, as the old holder would make it (the stage each names)."""
    return [
        ("evaluate", lambda: runs.begin_stage(run_id, "evaluate", owner=OLD)),
        ("generate", lambda: runs.begin_stage(run_id, "generate", owner=OLD)),
        ("generate", lambda: runs.save_progress(run_id, "generate", {"by": OLD}, owner=OLD)),
        ("generate", lambda: runs.complete_stage(run_id, "generate", {"by": OLD}, 9.0, owner=OLD)),
        ("select", lambda: runs.complete_stage(run_id, "select", {"by": OLD}, 9.0, decisions=[], owner=OLD)),
        ("generate", lambda: runs.fail_stage(run_id, "generate", "boom", 9.0, owner=OLD)),
        ("finish", lambda: runs.finish(run_id, "failed", owner=OLD, summary={"by": OLD}, error="boom")),
    ]


def test_a_holder_whose_run_was_taken_over_writes_nothing(store: Any) -> None:
    runs = RunStore(store)
    run = _claim(runs, OLD).run
    runs.begin_stage(run.id, "select", owner=OLD)
    runs.complete_stage(run.id, "select", {"plan": 1}, 0.5, decisions=[ROW], owner=OLD)
    runs.begin_stage(run.id, "generate", owner=OLD)
    runs.save_progress(run.id, "generate", {"by": OLD}, owner=OLD)
    # OLD's lease expires inside generate: the run is declared orphaned; until it is claimed, OLD writes nothing.
    assert runs.orphan(run.id)
    before = _rows(runs, run.id)
    for stage, write in _stale_writes(runs, run.id):
        with pytest.raises(RunTakenOverError, match=f"run {run.id} was taken over by nobody yet") as info:
            write()
        assert (info.value.run_id, info.value.stage, info.value.owner) == (run.id, stage, None)
        assert _rows(runs, run.id) == before

    # NEW takes it over and goes on; every write OLD still makes is refused and changes no row NEW wrote.
    assert _claim(runs, NEW, alive=False).kind == "resumed"
    assert runs.begin_stage(run.id, "generate", owner=NEW).attempt == 2
    runs.save_progress(run.id, "generate", {"by": NEW}, owner=NEW)
    before = _rows(runs, run.id)
    for stage, write in _stale_writes(runs, run.id):
        with pytest.raises(RunTakenOverError) as info:
            write()
        assert str(info.value).startswith(f"run {run.id} was taken over by {NEW}: the ")
        assert str(info.value).endswith(f" by {OLD} was not written") and stage in str(info.value)
        assert (info.value.run_id, info.value.stage, info.value.owner) == (run.id, stage, NEW)
        assert _rows(runs, run.id) == before
    got, stages, decisions = before
    assert (got.owner, got.stage, got.status) == (NEW, "generate", "running")
    assert stages["generate"].result == {"by": NEW} and stages["select"].result == {"plan": 1}
    assert [d.item_id for d in decisions] == ["e1"]

    # NEW's own writes go through, to the end; after it, OLD is told the run has ended.
    assert runs.complete_stage(run.id, "generate", {"by": NEW}, 1.0, owner=NEW).status == "done"
    assert runs.finish(run.id, "no_signal", owner=NEW, summary={"by": NEW}).outcome == "no_signal"
    with pytest.raises(RunTakenOverError, match=f"taken over by {NEW} and has ended \\(no_signal\\): the finish"):
        runs.finish(run.id, "failed", owner=OLD, summary={})
    with pytest.raises(RunTakenOverError, match=r"has already ended \(no_signal\): the start of the deploy stage"):
        runs.begin_stage(run.id, "deploy", owner=NEW)  # nobody writes to an ended run, its owner neither
    assert runs.get(run.id).summary == {"by": NEW} and "deploy" not in runs.stages(run.id)
    with pytest.raises(NotFoundError, match="no consolidation run 'nope'"):
        runs.save_progress("nope", "generate", {}, owner=NEW)


def test_a_skipped_run_takes_its_summary_from_its_owner_only(store: Any) -> None:
    runs = RunStore(store)
    _claim(runs, OLD)
    skipped = _claim(runs, NEW).run
    with pytest.raises(RunTakenOverError):
        runs.finish(skipped.id, "skipped_overlap", owner=OLD, summary={"by": OLD})
    done = runs.finish(skipped.id, "skipped_overlap", owner=NEW, summary={"by": NEW}, error=skipped.error)
    assert (done.status, done.outcome, done.summary, done.error) == ("finished", "skipped_overlap", {"by": NEW},
                                                                     skipped.error)  # fmt: skip
    with pytest.raises(RunTakenOverError, match=r"has already ended \(skipped_overlap\)"):
        runs.finish(skipped.id, "no_signal", owner=NEW, summary={})  # only its summary: it cannot become another


def test_a_takeover_waits_for_a_write_under_way_and_never_lands_inside_it(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The check and the write are one transaction whose first statement is the conditional write, so a takeover
    that starts between them (PostgreSQL: the run's row lock; SQLite: the write lock) waits for it to commit."""
    runs = RunStore(store)
    run = _claim(runs, OLD).run
    runs.begin_stage(run.id, "generate", owner=OLD)
    real = RunStore._stage_row
    taker = threading.Thread(target=lambda: (runs.orphan(run.id), _claim(runs, NEW, alive=False),
                                             runs.begin_stage(run.id, "generate", owner=NEW)))  # fmt: skip
    blocked: list[bool] = []

    def inside_the_write(s: Any, run_id: str, stage: str) -> Any:
        if not blocked:  # OLD has passed the check, its stage write not yet made: NEW takes the run over now
            taker.start()
            taker.join(0.5)
            blocked.append(taker.is_alive())
        return real(s, run_id, stage)

    monkeypatch.setattr(RunStore, "_stage_row", staticmethod(inside_the_write))
    runs.save_progress(run.id, "generate", {"by": OLD}, owner=OLD)
    taker.join(30)
    assert blocked == [True] and not taker.is_alive()
    got = runs.stages(run.id)["generate"]
    assert (runs.get(run.id).owner, got.attempt, got.result) == (NEW, 2, {"by": OLD})  # OLD's write came first, whole
    with pytest.raises(RunTakenOverError):
        runs.save_progress(run.id, "generate", {"by": OLD}, owner=OLD)
