"""What one sleep cycle hands back, and stores as the run's summary: :class:`CycleResult`.

Plain pydantic values that dump to JSON (``model_dump(mode="json")``): the CLI prints them,
``report.json`` holds them, and ``consolidation_runs.summary`` keeps them so ``runs show`` needs
nothing else. Stored summaries are read back tolerantly (newer keys are ignored).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_sleep.consolidation.runs import Outcome
from agent_sleep.interfaces import GateDecision

__all__ = ["CandidateResult", "CycleResult", "SkillResult", "SkillStatus", "SuiteDelta"]

SkillStatus = Literal["admitted", "rejected", "invalid", "failed", "skipped", "pending"]
"""``admitted``/``rejected`` by the gate; ``invalid``: the adapter failed validation (NaN, too large) and
was rejected in the registry; ``failed``: the generator raised; ``skipped``: not tried (no probes, out of
time); ``pending``: not decided yet (a run still going)."""


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class SuiteDelta(_Value):
    """One suite of a gate decision: baseline and candidate means, the paired change and its interval."""

    suite: str
    role: str
    n: int
    baseline: float
    candidate: float
    delta: float
    ci_low: float
    ci_high: float
    passed: bool


class CandidateResult(_Value):
    """One candidate generator of a skill: the version it made and what the gate said of it.

    ``target_gain``: the change on the skill's probes; ``guard_loss``: the largest drop on a guard suite
    (how the winner is picked among admitted candidates); ``chosen``: this one went into the stack."""

    generator: str
    generator_version: str | None = None
    adapter: str | None = None
    version: int | None = None
    status: SkillStatus = "pending"
    reasons: list[str] = Field(default_factory=list)
    comparisons: list[SuiteDelta] = Field(default_factory=list)
    weight: float | None = None
    target_gain: float | None = None
    guard_loss: float | None = None
    chosen: bool = False
    generate_seconds: float | None = None
    routed: dict[str, dict[str, int]] | None = None  # per suite {"fired", "items"} (None: not routed)


class SkillResult(_Value):
    """One skill of the run: the adapter made for it and what the gate said.

    With several candidate generators, ``candidates`` holds each one's version and verdict (in the order
    tried), ``winner`` the generator whose version went into the stack (None: none was admitted) and
    ``why`` the reason; ``generator``, ``adapter`` and the verdict fields are the winner's (with no winner,
    ``status`` and ``reasons`` sum the candidates up and ``adapter`` is None)."""

    skill: str
    generator: str
    generator_version: str | None = None
    adapter: str | None = None  # skill@vN, once registered
    version: int | None = None  # its N
    replaces: str | None = None  # the version live before, if any
    status: SkillStatus = "pending"
    reasons: list[str] = Field(default_factory=list)
    comparisons: list[SuiteDelta] = Field(default_factory=list)
    weight: float | None = None  # the stack weight the gate's last verdict was for (evaluation.candidate_weights)
    routed: dict[str, dict[str, int]] | None = None
    """A routed adapter: per suite, on how many items its router fired ({"fired", "items"}); None: not routed."""
    train_items: int = 0  # conversations + documents trained on
    probes: int = 0
    generate_seconds: float | None = None
    candidates: list[CandidateResult] = Field(default_factory=list)
    winner: str | None = None
    why: str | None = None

    @staticmethod
    def deltas(decision: GateDecision) -> list[SuiteDelta]:
        return [SuiteDelta(suite=c.suite, role=c.role, n=c.n, baseline=c.baseline, candidate=c.candidate,
                           delta=c.delta, ci_low=c.ci_low, ci_high=c.ci_high, passed=c.passed)
                for c in decision.comparisons]  # fmt: skip


class CycleResult(_Value):
    """How one run went. ``status`` is ``running`` only when the run stopped without finishing (the database
    went away) and is left for a later cycle to resume; ``outcome`` is then ``failed`` and not yet recorded."""

    run_id: str
    agent: str
    outcome: Outcome
    status: Literal["finished", "running"] = "finished"
    resumed: bool = False
    deployed_stack: str | None = None  # agent:stack@vN made live by this run
    incumbent_stack: str | None = None  # what was live when the run evaluated (None: the base model)
    skills: list[SkillResult] = Field(default_factory=list)
    stages: dict[str, float] = Field(default_factory=dict)  # seconds per stage (the attempt that finished)
    selection: dict[str, dict[str, int]] = Field(default_factory=dict)  # selector -> {"kept", "dropped"}
    consumed: dict[str, int] = Field(default_factory=dict)  # {"episodes": n, "documents": n} marked consolidated
    error: str | None = None
    folder: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
