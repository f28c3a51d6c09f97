"""Consolidation runs in SQL: one row per run, one per stage, one per selection decision.

:class:`RunStore` is the only code that writes the tables of migration 0004 (``consolidation_runs``,
``run_stages``, ``selection_decisions``); every method is one transaction on the experience store's
database, so SQLite and PostgreSQL behave alike. A stage row holds the JSON result the next stage,
or a rerun, reads: a stage that is ``done`` is never run again, one that is ``started`` (its process
died) or ``failed`` runs again with ``attempt`` one higher, reading the progress it saved.

One run per agent at a time: :meth:`RunStore.claim` locks the agent's row, then either starts a new
run, takes over a running one whose owner is gone (``alive`` says), resumes the one asked for, or
records a ``skipped_overlap`` run naming the run that is still going. Not here: what the stages do
(:mod:`.cycle`), when a run counts as alive (:mod:`.owners`).

The run's writes are fenced by its owner: :meth:`~RunStore.begin_stage`, :meth:`~RunStore.save_progress`,
:meth:`~RunStore.complete_stage`, :meth:`~RunStore.fail_stage` and :meth:`~RunStore.finish` take the
caller's ``owner`` and write only while the run is still ``running`` under that owner, checked by the
transaction's first write (as :meth:`~RunStore.heartbeat` is). A holder whose run was taken over while it
was inside a stage (its lease expired, the run was orphaned and claimed again) gets
:class:`~agent_sleep.errors.RunTakenOverError` and writes nothing, so it cannot overwrite the new owner's
stage results, mark a stage failed or end the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import delete, func, insert, or_, select, update

from agent_sleep.errors import InvalidInputError, NotFoundError, RunTakenOverError
from agent_sleep.names import did_you_mean
from agent_sleep.store.models import Agent, ConsolidationRun, RunStage, SelectionDecision, new_id, utcnow
from agent_sleep.store.records import Record, normalize_episode_id
from agent_sleep.store.store import ExperienceStore

__all__ = ["OUTCOMES", "STAGES", "Claim", "DecisionRecord", "Outcome", "RunRecord", "RunStore", "StageRecord"]

Outcome = Literal["promoted", "rejected_by_gate", "no_signal", "failed", "skipped_overlap"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
Stage = Literal["select", "generate", "evaluate", "deploy"]
STAGES: tuple[str, ...] = get_args(Stage)


class RunRecord(Record):
    id: str
    agent: str
    status: str  # running | finished
    outcome: str | None
    stage: str | None
    config: dict[str, Any]
    folder: str | None
    error: str | None
    summary: dict[str, Any]
    deployed_stack: str | None
    owner: str | None
    heartbeat_at: datetime | None
    started_at: datetime
    ended_at: datetime | None


class StageRecord(Record):
    run_id: str
    stage: str
    status: str  # started | done | failed
    attempt: int
    result: dict[str, Any]
    error: str | None
    seconds: float | None
    started_at: datetime
    ended_at: datetime | None


class DecisionRecord(Record):
    id: int
    run_id: str
    item_kind: str
    item_id: str
    selector: str
    kept: bool
    reason: str
    skill: str | None
    role: str | None
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """What :meth:`RunStore.claim` did: ``new`` run, ``resumed`` one, found it ``finished``, or ``skipped``
    (a ``skipped_overlap`` run was recorded because ``blocking`` is still running)."""

    run: RunRecord
    kind: Literal["new", "resumed", "finished", "skipped"]
    blocking: RunRecord | None = None


class RunStore:
    """The run tables over an :class:`ExperienceStore`'s database (see the module docstring)."""

    def __init__(self, store: ExperienceStore) -> None:
        self.store = store

    # -- starting --------------------------------------------------------------------------------
    def claim(self, agent: str, *, owner: str, config: Mapping[str, Any], folder: Callable[[str], str],
              alive: Callable[[RunRecord], bool], resume: str | None = None) -> Claim:  # fmt: skip
        """Start, resume or skip a run of ``agent`` as ``owner``, in one transaction that locks the agent.

        ``resume``: this run (an id or unique prefix) and no other; a finished one is handed back as it
        is. Without it, a running run whose owner is not ``alive`` is taken over, else a new run starts.
        Either way, a running run that is alive (and not ours) makes this a ``skipped_overlap`` run.
        """
        self.store.ensure_agent(agent)
        target = self.get(resume) if resume is not None else None
        if target is not None and target.agent != agent:
            raise InvalidInputError(f"run {target.id} belongs to agent {target.agent!r}, not {agent!r}")
        now = utcnow()
        with self.store.session() as s:
            # A write first: it takes PostgreSQL's row lock and SQLite's write lock, so two claims for one
            # agent run one after the other and the second sees the first one's run.
            s.execute(update(Agent).where(Agent.name == agent).values(meta=Agent.meta))
            if target is not None:
                row = s.get(ConsolidationRun, target.id)
                assert row is not None
                if row.status == "finished":
                    return Claim(self._run(row), "finished")
            running = s.execute(select(ConsolidationRun).where(ConsolidationRun.agent == agent,
                                                               ConsolidationRun.status == "running")
                                .order_by(ConsolidationRun.started_at.desc())).scalars().all()  # fmt: skip
            busy = [r for r in running if alive(self._run(r))]
            if busy:
                other = busy[0]
                skipped = ConsolidationRun(
                    id=new_id(), agent=agent, status="finished", outcome="skipped_overlap", stage=None,
                    config=dict(config), folder=None, summary={}, owner=owner, heartbeat_at=now, started_at=now,
                    ended_at=now, error=f"run {other.id} is still running for agent {agent!r} (owner {other.owner}, "
                                      f"stage {other.stage or 'starting'})",
                )  # fmt: skip
                s.add(skipped)
                s.flush()
                return Claim(self._run(skipped), "skipped", blocking=self._run(other))
            row = s.get(ConsolidationRun, target.id) if target is not None else (running[0] if running else None)
            if row is not None:
                row.owner, row.heartbeat_at = owner, now
                s.flush()
                return Claim(self._run(row), "resumed")
            run_id = new_id()
            run_folder = folder(run_id)
            if not Path(run_folder).is_absolute():  # a relative folder would follow whichever cwd resumes it
                raise InvalidInputError(f"a run folder must be an absolute path, not {run_folder!r}")
            row = ConsolidationRun(id=run_id, agent=agent, status="running", outcome=None, stage=None,
                                   config=dict(config), folder=run_folder, summary={}, owner=owner,
                                   heartbeat_at=now, started_at=now)  # fmt: skip
            s.add(row)
            s.flush()
            return Claim(self._run(row), "new")

    def heartbeat(self, run_id: str, owner: str) -> bool:
        """Say the run's owner is still at work; False if another owner took the run over."""
        with self.store.session() as s:
            n = s.execute(update(ConsolidationRun).where(ConsolidationRun.id == run_id,
                                                         ConsolidationRun.owner == owner,
                                                         ConsolidationRun.status == "running")
                          .values(heartbeat_at=utcnow())).rowcount  # fmt: skip
        return bool(n)

    def orphan(self, run_id: str) -> bool:
        """Declare a running run's owner gone, so the next claim takes the run over at once; False if not running.

        For a caller that knows better than heartbeats (the scheduler: the agent's lease of the process that
        drove the run has ended). Owner and heartbeat are cleared, so the old owner's heartbeats fail from now on.
        """
        with self.store.session() as s:
            n = s.execute(update(ConsolidationRun).where(ConsolidationRun.id == run_id,
                                                         ConsolidationRun.status == "running")
                          .values(owner=None, heartbeat_at=None)).rowcount  # fmt: skip
        return bool(n)

    # -- stages (fenced: see _fence) ---------------------------------------------------------------
    def begin_stage(self, run_id: str, stage: str, *, owner: str) -> StageRecord:
        """The stage's row, now ``started`` (attempt + 1, progress kept); a ``done`` one is returned unchanged."""
        if stage not in STAGES:
            raise InvalidInputError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        now = utcnow()
        with self.store.session() as s:
            self._fence(s, run_id, owner, stage, f"start of the {stage} stage", heartbeat_at=now)
            row = s.get(RunStage, (run_id, stage))
            if row is not None and row.status == "done":
                return StageRecord.model_validate(row)
            if row is None:
                row = RunStage(run_id=run_id, stage=stage, status="started", attempt=1, result={}, started_at=now)
                s.add(row)
            else:
                row.status, row.attempt, row.error, row.started_at, row.ended_at = "started", row.attempt + 1, None, \
                    now, None  # fmt: skip
            s.execute(update(ConsolidationRun).where(ConsolidationRun.id == run_id).values(stage=stage))
            s.flush()
            return StageRecord.model_validate(row)

    def save_progress(self, run_id: str, stage: str, result: Mapping[str, Any], *, owner: str) -> None:
        """Keep a started stage's partial result, for a rerun to continue from."""
        with self.store.session() as s:
            self._fence(s, run_id, owner, stage, f"progress of the {stage} stage", heartbeat_at=utcnow())
            row = self._stage_row(s, run_id, stage)
            row.result = dict(result)

    def complete_stage(self, run_id: str, stage: str, result: Mapping[str, Any], seconds: float,
                       decisions: Iterable[Mapping[str, Any]] | None = None, *, owner: str) -> StageRecord:  # fmt: skip
        """Mark the stage done with its result; ``decisions`` (selection rows) replace the run's, in one transaction."""
        now = utcnow()
        with self.store.session() as s:
            self._fence(s, run_id, owner, stage, f"result of the {stage} stage", heartbeat_at=now)
            row = self._stage_row(s, run_id, stage)
            row.status, row.result, row.seconds, row.ended_at, row.error = "done", dict(result), seconds, now, None
            if decisions is not None:
                s.execute(delete(SelectionDecision).where(SelectionDecision.run_id == run_id))
                rows = [{"run_id": run_id, "item_kind": d["item_kind"], "item_id": d["item_id"],
                         "selector": d["selector"], "kept": bool(d["kept"]), "reason": d["reason"],
                         "skill": d.get("skill"), "role": d.get("role"), "created_at": now}
                        for d in decisions]  # fmt: skip
                if rows:
                    s.execute(insert(SelectionDecision), rows)
            s.flush()
            return StageRecord.model_validate(row)

    def fail_stage(self, run_id: str, stage: str, error: str, seconds: float, *, owner: str) -> None:
        now = utcnow()
        with self.store.session() as s:
            self._fence(s, run_id, owner, stage, f"failure of the {stage} stage", heartbeat_at=now)
            row = self._stage_row(s, run_id, stage)
            row.status, row.error, row.seconds, row.ended_at = "failed", error, seconds, now

    def finish(self, run_id: str, outcome: Outcome, *, owner: str, summary: Mapping[str, Any],
               deployed_stack: str | None = None, error: str | None = None) -> RunRecord:  # fmt: skip
        """End the run with its outcome and summary (the :class:`~.result.CycleResult` as JSON).

        ``skipped_overlap``: the run :meth:`claim` recorded as skipped (already finished) gets its summary.
        """
        if outcome not in OUTCOMES:
            raise InvalidInputError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        with self.store.session() as s:
            self._fence(s, run_id, owner, "finish", f"finish ({outcome})", skipped=outcome == "skipped_overlap",
                        status="finished", outcome=outcome, summary=dict(summary), deployed_stack=deployed_stack,
                        error=error, ended_at=utcnow())  # fmt: skip
            return self._run(self._run_row(s, run_id))

    # -- reading -------------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        """The run with this id, or with this unique prefix (at least 4 characters); NotFoundError otherwise."""
        with self.store.session() as s:
            return self._run(self._run_row(s, run_id))

    def runs(self, *, agent: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs newest first."""
        stmt = select(ConsolidationRun).order_by(ConsolidationRun.started_at.desc(), ConsolidationRun.id)
        if agent is not None:
            stmt = stmt.where(ConsolidationRun.agent == agent)
        if limit:
            stmt = stmt.limit(limit)
        with self.store.session() as s:
            return [self._run(r) for r in s.execute(stmt).scalars()]

    def stages(self, run_id: str) -> dict[str, StageRecord]:
        """The run's stage rows by stage, in stage order."""
        with self.store.session() as s:
            rows = s.execute(select(RunStage).where(RunStage.run_id == run_id)).scalars()
            found = {r.stage: StageRecord.model_validate(r) for r in rows}
        return {name: found[name] for name in STAGES if name in found}

    def decisions(self, run_id: str, item: str | None = None) -> list[DecisionRecord]:
        """The run's selection decisions in the order they were made; ``item``: only those about that id."""
        stmt = select(SelectionDecision).where(SelectionDecision.run_id == run_id).order_by(SelectionDecision.id)
        if item is not None:
            stmt = stmt.where(SelectionDecision.item_id.in_({item, normalize_episode_id(item)}))
        with self.store.session() as s:
            return [DecisionRecord.model_validate(r) for r in s.execute(stmt).scalars()]

    def stages_of(self, run_ids: Iterable[str]) -> dict[str, dict[str, StageRecord]]:
        """:meth:`stages` of many runs in one query (a run without stage rows maps to ``{}``)."""
        ids = list(dict.fromkeys(run_ids))
        found: dict[str, dict[str, StageRecord]] = {run_id: {} for run_id in ids}
        with self.store.session() as s:
            for chunk in _chunks(ids):
                for row in s.execute(select(RunStage).where(RunStage.run_id.in_(chunk))).scalars():
                    found[row.run_id][row.stage] = StageRecord.model_validate(row)
        return {run_id: {name: by[name] for name in STAGES if name in by} for run_id, by in found.items()}

    def selection_counts(self, run_ids: Iterable[str]) -> dict[str, dict[str, dict[str, int]]]:
        """Per run, per selector (in the order the selectors first decided): ``{"kept": n, "dropped": n}``,
        counted in SQL from the run's selection decisions."""
        ids = list(dict.fromkeys(run_ids))
        rows: list[tuple[str, str, bool, int, int]] = []
        with self.store.session() as s:
            for chunk in _chunks(ids):
                rows += s.execute(select(SelectionDecision.run_id, SelectionDecision.selector, SelectionDecision.kept,
                                         func.count(), func.min(SelectionDecision.id))
                                  .where(SelectionDecision.run_id.in_(chunk))
                                  .group_by(SelectionDecision.run_id, SelectionDecision.selector,
                                            SelectionDecision.kept)).all()  # fmt: skip
        first: dict[tuple[str, str], int] = {}
        for run_id, selector, _, _, lowest in rows:
            first[(run_id, selector)] = min(first.get((run_id, selector), lowest), lowest)
        out: dict[str, dict[str, dict[str, int]]] = {run_id: {} for run_id in ids}
        for run_id, selector in sorted(first, key=first.__getitem__):
            out[run_id][selector] = {"kept": 0, "dropped": 0}
        for run_id, selector, kept, n, _ in rows:
            out[run_id][selector]["kept" if kept else "dropped"] += int(n)
        return out

    # -- rows ------------------------------------------------------------------------------------------
    @staticmethod
    def _fence(s: Any, run_id: str, owner: str, stage: str, what: str, *, skipped: bool = False,
               **values: Any) -> None:  # fmt: skip
        """The transaction's first write: ``values`` onto the run, only while ``owner`` holds it ``running``.

        A stale holder (its run taken over, or declared orphaned, while it was inside a stage) must not
        overwrite what the new owner writes. Being a write, the check takes the lock :meth:`claim` takes first
        (PostgreSQL's row lock, which re-checks the condition on a row a concurrent claim changed; SQLite's
        write lock), so a takeover lands wholly before or after the caller's transaction, never between this
        check and the stage write after it. If the run is not held, :class:`RunTakenOverError` rolls the
        transaction back: nothing is written. ``skipped``: the ``skipped_overlap`` run :meth:`claim` made
        (finished at once) is its owner's too, to add the summary.
        """
        held = ConsolidationRun.status == "running"
        if skipped:
            held = or_(held, ConsolidationRun.outcome == "skipped_overlap")
        n = s.execute(update(ConsolidationRun).where(ConsolidationRun.id == run_id, ConsolidationRun.owner == owner,
                                                     held).values(**values)).rowcount  # fmt: skip
        if n:
            return
        row = s.get(ConsolidationRun, run_id)
        if row is None:
            raise NotFoundError(f"no consolidation run {run_id!r}")
        if row.owner == owner:
            why = f"run {run_id} has already ended ({row.outcome})"
        else:
            why = f"run {run_id} was taken over by {row.owner or 'nobody yet (its owner was declared gone)'}"
            why += "" if row.status == "running" else f" and has ended ({row.outcome})"
        raise RunTakenOverError(f"{why}: the {what} by {owner} was not written", run_id=run_id, stage=stage,
                                owner=row.owner)  # fmt: skip

    @staticmethod
    def _run(row: ConsolidationRun) -> RunRecord:
        return RunRecord.model_validate(row)

    @staticmethod
    def _stage_row(s: Any, run_id: str, stage: str) -> RunStage:
        row = s.get(RunStage, (run_id, stage))
        if row is None:
            raise NotFoundError(f"run {run_id} has no {stage!r} stage yet")
        return row  # type: ignore[no-any-return]

    @staticmethod
    def _run_row(s: Any, run_id: str) -> ConsolidationRun:
        row = s.get(ConsolidationRun, run_id)
        if row is not None:
            return row  # type: ignore[no-any-return]
        text = str(run_id).strip().lower()
        found = []
        if len(text) >= 4:
            found = s.execute(select(ConsolidationRun).where(ConsolidationRun.id.startswith(text, autoescape=True))
                              .limit(2)).scalars().all()  # fmt: skip
        if len(found) == 1:
            return found[0]  # type: ignore[no-any-return]
        if len(found) > 1:
            raise NotFoundError(f"run id prefix {run_id!r} names more than one run; give more characters")
        recent = s.execute(select(ConsolidationRun.id).order_by(ConsolidationRun.started_at.desc()).limit(50)).scalars()
        raise NotFoundError(f"no consolidation run {run_id!r}" + did_you_mean(str(run_id), recent))


def _chunks(ids: list[str], size: int = 500) -> Iterable[list[str]]:
    """``ids`` in slices small enough for one ``IN (...)`` on every backend."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]
