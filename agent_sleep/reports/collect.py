"""Build the :class:`~.model.Report` from the database: the one place a report reads anything.

What each section reads, through the same APIs the runs and the registry write with:

* runs: :meth:`RunStore.runs` (outcome, times, summary), :meth:`RunStore.stages_of` (seconds per
  stage and attempt) and :meth:`RunStore.selection_counts` (kept/dropped per selector, counted in SQL
  from ``selection_decisions``);
* gate deltas, per (run, skill): the run's summary (a finished run's
  :class:`~agent_sleep.consolidation.result.CycleResult`), else its evaluate stage's saved decisions (a
  run still going, or one whose summary no longer validates). The adapter version's
  ``eval_summary["gate"]`` holds the same comparisons again (written from the stage's decision), so it
  adds nothing a run does not have;
* guard scores: the evaluate stage's saved lm-eval results, per stack it scored (the live one and each
  candidate), for the suites whose role is ``guard``;
* deployments: :meth:`AdapterRegistry.deployments` (kind, actor, reason, run, detail).

Stored JSON is read tolerantly: a run whose summary no longer validates still shows its outcome and
stage times, and a logged warning names it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from agent_sleep.consolidation.gating import stack_label
from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import RunRecord, RunStore, StageRecord
from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.names import did_you_mean
from agent_sleep.registry import AdapterRegistry
from agent_sleep.registry.records import DeploymentRecord
from agent_sleep.reports.model import (
    AgentReport,
    DeploymentEvent,
    GateDelta,
    GuardScore,
    Report,
    RunPoint,
    SelectionCount,
    StageTime,
)
from agent_sleep.store.models import utcnow
from agent_sleep.store.store import ExperienceStore

__all__ = ["collect_report"]

log = logging.getLogger("agent_sleep.reports")


def collect_report(store: ExperienceStore, *, agent: str | None = None, run: str | None = None,
                   now: datetime | None = None) -> Report:  # fmt: skip
    """The report for every agent with runs or deployments, or only ``agent``, or only the run ``run``.

    ``run`` is an id or a unique prefix (its agent's other runs are left out, but cycles keep their
    numbers). Raises :class:`NotFoundError` for an unknown agent or run, :class:`InvalidInputError` when
    ``run`` belongs to another agent than ``agent``.
    """
    runs = RunStore(store)
    registry = AdapterRegistry(store)
    only: RunRecord | None = None
    if run is not None:
        only = runs.get(run)
        if agent is not None and only.agent != agent:
            raise InvalidInputError(f"run {only.id} belongs to agent {only.agent!r}, not {agent!r}")
        agent = only.agent
    known = store.agents()
    if agent is not None and agent not in known:
        raise NotFoundError(f"no agent named {agent!r}{did_you_mean(agent, known)}")
    everything = runs.runs(agent=agent)
    by_agent: dict[str, list[RunRecord]] = {}
    for r in reversed(everything):  # oldest first
        by_agent.setdefault(r.agent, []).append(r)
    wanted = [only] if only is not None else everything
    stages = runs.stages_of(r.id for r in wanted)
    selection = runs.selection_counts(r.id for r in wanted)
    names = [agent] if agent is not None else known
    reports = []
    for name in names:
        history = by_agent.get(name, [])
        cycles = {r.id: n for n, r in enumerate(history, start=1)}
        deployments = registry.deployments(name)
        if only is not None:
            history = [only]
            deployments = [d for d in deployments if d.run_id == only.id]
        elif not history and not deployments and agent is None:
            continue  # an agent that only logged experiences has no history to report
        reports.append(_agent_report(name, history, cycles, stages, selection, deployments))
    return Report(generated_at=now or utcnow(), database=store.safe_url, agent=agent,
                  run=only.id if only is not None else None, agents=reports)  # fmt: skip


# ---------------------------------------------------------------- one agent


def _agent_report(agent: str, history: list[RunRecord], cycles: Mapping[str, int],
                  stages: Mapping[str, Mapping[str, StageRecord]], selection: Mapping[str, Any],
                  deployments: list[DeploymentRecord]) -> AgentReport:  # fmt: skip
    points, gate, guards = [], [], []
    for r in history:
        cycle, rows = cycles[r.id], stages.get(r.id, {})
        summary = _summary(r)
        judged = rows["evaluate"].result if "evaluate" in rows else {}
        made = (rows["generate"].result.get("skills") or {}) if "generate" in rows else {}
        deltas = _gate_rows(r, cycle, summary, judged, made)
        verdicts = {s.skill: s.status for s in summary.skills} if summary else {}
        for d in deltas:
            verdicts.setdefault(d.skill, d.verdict)
        incumbent = summary.incumbent_stack if summary else None
        points.append(RunPoint(
            cycle=cycle, run_id=r.id, started_at=r.started_at, ended_at=r.ended_at, status=r.status,
            outcome=r.outcome, seconds=(r.ended_at - r.started_at).total_seconds() if r.ended_at else None,
            stages=[StageTime(stage=name, status=st.status, attempt=st.attempt, seconds=st.seconds)
                    for name, st in rows.items()],
            incumbent_stack=incumbent or (judged.get("incumbent") or {}).get("stack"),
            deployed_stack=r.deployed_stack, skills=verdicts, error=r.error,
            selection=[SelectionCount(selector=s, kept=c["kept"], dropped=c["dropped"])
                       for s, c in (selection.get(r.id) or {}).items()],
        ))  # fmt: skip
        gate += deltas
        guards += _guard_rows(r, cycle, judged)
    events = [DeploymentEvent(seq=d.seq, at=d.created_at, kind=d.kind, stack=d.stack.name,
                              stack_version=d.stack.version, adapters=[i.adapter for i in d.stack.items],
                              actor=d.actor, reason=d.reason, run_id=d.run_id, cycle=cycles.get(d.run_id or ""),
                              detail=d.detail)
              for d in deployments]  # fmt: skip
    return AgentReport(agent=agent, runs=points, gate=gate, guards=guards, deployments=events)


def _summary(run: RunRecord) -> CycleResult | None:
    if not run.summary:
        return None
    try:
        return CycleResult.model_validate(run.summary)
    except ValueError as exc:
        log.warning("run %s: its stored summary does not validate (%s); reading its stages only", run.id, exc)
        return None


def _gate_rows(run: RunRecord, cycle: int, summary: CycleResult | None, judged: Mapping[str, Any],
               made: Mapping[str, Any]) -> list[GateDelta]:  # fmt: skip
    """Every comparison of every skill the run gated: from the summary, else from the evaluate stage."""
    found: dict[str, tuple[str | None, str, list[Any], str]] = {}  # skill -> (adapter, verdict, comparisons, source)
    for s in summary.skills if summary else ():
        if s.comparisons:
            found[s.skill] = (s.adapter, s.status, [c.model_dump() for c in s.comparisons], "summary")
    for skill, decided in (judged.get("skills") or {}).items():
        if skill not in found and isinstance(decided, dict) and decided.get("comparisons"):
            adapter = (made.get(skill) or {}).get("adapter")
            found[skill] = (adapter, str(decided.get("status")), list(decided["comparisons"]), "stage")
    rows = []
    for skill, (adapter, verdict, comparisons, source) in found.items():
        for c in comparisons:
            try:
                rows.append(GateDelta(cycle=cycle, run_id=run.id, at=run.started_at, skill=skill, adapter=adapter,
                                      verdict=verdict, source=source, **{k: c[k] for k in _COMPARISON}))  # fmt: skip
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("run %s, skill %s: a stored gate comparison is unreadable (%s)", run.id, skill, exc)
    return rows


_COMPARISON = ("suite", "role", "n", "baseline", "candidate", "delta", "ci_low", "ci_high", "passed")


def _guard_rows(run: RunRecord, cycle: int, judged: Mapping[str, Any]) -> list[GuardScore]:
    """The guard suites' accuracy for the live stack and each candidate the evaluate stage scored."""
    results: Mapping[str, Any] = judged.get("results") or {}
    guards = [name for name, about in (judged.get("suites") or {}).items() if about.get("role") == "guard"]
    if not results or not guards:
        return []
    live = [(s["adapter"], float(s["weight"])) for s in (judged.get("incumbent") or {}).get("skills", [])]
    stacks: list[tuple[str, str, str | None, str | None]] = [(stack_label(live), "live", None, None)]
    for skill, decided in (judged.get("skills") or {}).items():
        if isinstance(decided, dict) and decided.get("stack"):
            label = stack_label([(str(a), float(w)) for a, w in decided["stack"]])
            stacks.append((label, "candidate", skill, str(decided.get("status"))))
    rows = []
    for label, role, skill, verdict in stacks:
        scored = results.get(label) or {}
        for suite in guards:
            r = scored.get(suite)
            accuracy = (r or {}).get("metrics", {}).get("accuracy")
            if accuracy is None:
                continue
            rows.append(GuardScore(cycle=cycle, run_id=run.id, at=run.started_at, suite=suite, stack=label,
                                   stack_role=role, skill=skill, verdict=verdict, accuracy=float(accuracy),
                                   n=int(r.get("samples") or 0)))  # type: ignore[union-attr]  # fmt: skip
    return rows
