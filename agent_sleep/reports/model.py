"""The report across sleep cycles as typed values: :class:`Report`, one :class:`AgentReport` per agent.

One model, three views: ``--format json`` is this model dumped (``Report.model_dump(mode="json")``),
Markdown and HTML render the same values through the same number formats (:mod:`.text`). The model
holds rows as they were read (one per run, per gate comparison, per guard score, per deployment); the
per-skill series, outcome counts and selection totals are derived from them (``computed_field``: they
are in the JSON too, and cannot disagree with the rows they come from).

Every ``cycle`` is the run's number among the agent's runs, oldest first (1, 2, …); it is the x axis
of the plots and ties the rows of one run together across sections. Times are UTC to the second and dump
as the CLI writes every time (``2026-11-29T06:58:11+00:00``), so a dump reads back equal.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer, computed_field, field_validator

from agent_sleep.store.records import as_utc

__all__ = [
    "AgentReport", "DeploymentEvent", "GateDelta", "GuardScore", "Report", "RunPoint", "SelectionCount",
    "SkillSeries", "StageTime",
]  # fmt: skip

GateSource = Literal["summary", "stage"]
"""Where a gate comparison was read: the run's summary (a finished run) or its evaluate stage's saved
result (a run still going, or one whose summary no longer validates)."""


Time = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(timespec="seconds"), when_used="json")]


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")  # ignore: a dump (with its computed fields) reads back

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, v: Any) -> Any:
        utc = as_utc(v) if isinstance(v, datetime) else None
        return utc.replace(microsecond=0) if utc is not None else v


class StageTime(_Value):
    stage: str  # select | generate | evaluate | deploy
    status: str  # started | done | failed
    attempt: int
    seconds: float | None


class SelectionCount(_Value):
    selector: str
    kept: int
    dropped: int


class RunPoint(_Value):
    """One consolidation run: how it ended and how long each stage took."""

    cycle: int
    run_id: str
    started_at: Time
    ended_at: Time | None
    status: str  # running | finished
    outcome: str | None  # promoted | rejected_by_gate | no_signal | failed | skipped_overlap (None: running)
    seconds: float | None  # wall time, start to end
    stages: list[StageTime]
    incumbent_stack: str | None  # live when the run evaluated (None: the base model, or not known)
    deployed_stack: str | None
    skills: dict[str, str]  # skill -> verdict (admitted, rejected, invalid, failed, skipped, pending)
    selection: list[SelectionCount]  # from the run's selection decisions, in selector order
    error: str | None


class GateDelta(_Value):
    """One suite of one gate decision: baseline and candidate means, the paired change and its bootstrap CI."""

    cycle: int
    run_id: str
    at: Time
    skill: str
    adapter: str | None
    verdict: str  # the skill's verdict in that run
    suite: str
    role: str  # target | guard | interference
    n: int
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    passed: bool
    source: GateSource


class SkillSeries(_Value):
    """A skill's target metric (accuracy on its held-out probes) over the cycles that gated it."""

    skill: str
    points: list[GateDelta]


class GuardScore(_Value):
    """One guard suite's accuracy for one stack a run scored: the live one (``stack_role="live"``) or a candidate."""

    cycle: int
    run_id: str
    at: Time
    suite: str
    stack: str  # the stack's label: adapters joined by "+", or "base"
    stack_role: Literal["live", "candidate"]
    skill: str | None  # the candidate's skill
    verdict: str | None  # the candidate's verdict
    accuracy: float
    n: int


class DeploymentEvent(_Value):
    """One deployment of the agent: a stack became live (``kind``: deploy, rollback, remove_skill)."""

    seq: int
    at: Time
    kind: str
    stack: str
    stack_version: int
    adapters: list[str]
    actor: str
    reason: str
    run_id: str | None
    cycle: int | None  # the run's cycle, when a run made it
    detail: dict[str, Any] | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rollback(self) -> bool:
        return self.kind == "rollback"


class AgentReport(_Value):
    agent: str
    runs: list[RunPoint]
    gate: list[GateDelta]
    guards: list[GuardScore]
    deployments: list[DeploymentEvent]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def outcomes(self) -> dict[str, int]:
        """Runs per outcome (``running`` for a run not finished)."""
        return dict(Counter(r.outcome or "running" for r in self.runs))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def skills(self) -> list[SkillSeries]:
        """Per skill (first gated first), its target-suite rows in cycle order."""
        series: dict[str, list[GateDelta]] = {}
        for g in self.gate:
            if g.role == "target":
                series.setdefault(g.skill, []).append(g)
        return [SkillSeries(skill=s, points=sorted(p, key=lambda g: g.cycle)) for s, p in series.items()]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def selection(self) -> list[SelectionCount]:
        """Kept and dropped per selector, summed over the runs."""
        kept: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        order: dict[str, None] = {}
        for run in self.runs:
            for c in run.selection:
                order.setdefault(c.selector)
                kept[c.selector] += c.kept
                dropped[c.selector] += c.dropped
        return [SelectionCount(selector=s, kept=kept[s], dropped=dropped[s]) for s in order]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def live_stack(self) -> str | None:
        return self.deployments[-1].stack if self.deployments else None

    @property
    def empty(self) -> bool:
        return not self.runs and not self.deployments


class Report(_Value):
    """The report: the agents in scope (``agent``/``run``: the filters asked for), each with its history."""

    schema_version: int = 1
    generated_at: Time
    database: str  # the database URL, password hidden
    agent: str | None
    run: str | None
    agents: list[AgentReport]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def empty(self) -> bool:
        """Nothing to show: no runs and no deployments for any agent in scope."""
        return all(a.empty for a in self.agents)
