"""The stages of the asleep side, as Protocols side by side, with the small values they hand on.

One consolidation run reads the experience store and passes typed values down the line::

    ExperienceReader ──▶ Selector ──▶ Generator ──▶ Evaluator ──▶ Gate ──▶ DeployTarget
    episodes, events,    kept items   a LoRA in     scores of a   admitted   a new live stack
    feedback, documents  + decisions  memory, then  stack on a    or         for the agent
                                      a PEFT folder suite         rejected

Each Protocol is structural: an implementation never imports or subclasses it, it only has the
methods (``isinstance`` works, being ``runtime_checkable``). Expected results are data
(:class:`Selection`, :class:`GateDecision`, a deploy outcome's ``status``); exceptions are for the
unexpected. Implementations today: :class:`~agent_sleep.store.ExperienceStore` (SQL) and
:class:`~agent_sleep.store.memory.InMemoryExperienceStore` read experiences;
:class:`~agent_sleep.generators.d2l.D2LGenerator`, :class:`~agent_sleep.generators.t2l.T2LGenerator`,
:class:`~agent_sleep.generators.gradient_cd.GradientCDGenerator` and
:class:`~agent_sleep.generators.sft.SFTGenerator` generate (by name through
:mod:`agent_sleep.generators.registry`); :class:`~agent_sleep.evaluation.lm_eval.LmEvalEvaluator`
evaluates and :class:`~agent_sleep.evaluation.gate.PairedGate` gates;
:class:`~agent_sleep.runtime.live.LiveRuntime` deploys. Selectors live in :mod:`agent_sleep.selectors`
(by name through :mod:`agent_sleep.selectors.registry`; :func:`~agent_sleep.selectors.planner.build_plan`
runs them as a chain).

This module is the bottom layer: it imports the standard library, pydantic and
:mod:`agent_sleep.errors` only, so every other layer may import it. Records that higher layers
own (episodes, deploy outcomes, generated adapters) are described here by the fields a stage
reads (``...View`` Protocols), which the owners' record types satisfy. Not here: any implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent_sleep.errors import InvalidInputError

__all__ = [
    "AdapterWeights", "Decision", "DeployResult", "DeployTarget", "DeploymentView", "DocumentView",
    "EpisodeView", "EvalResult", "Evaluator", "EventView", "ExperienceReader", "FeedbackView", "Gate",
    "GateDecision", "GenerationRequest", "Generator", "Identified", "LiveView", "Probe", "Selection",
    "SectionedGenerator", "Selector", "StackItemView", "StackRefs", "StackView", "SuiteComparison", "SuiteRole",
]  # fmt: skip

StackRefs = Sequence[str | tuple[str, float]]
"""Adapters to run together: ``skill@vN`` (or ``skill``), optionally with a weight; empty is the base model."""


# ---------------------------------------------------------------- reading experiences


@runtime_checkable
class EpisodeView(Protocol):
    """One run of an agent, with its feedback summarised (``mean_score`` over scored feedback only)."""

    @property
    def id(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def thread_id(self) -> str | None: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def ended_at(self) -> datetime | None: ...
    @property
    def status(self) -> str: ...  # running | completed | error
    @property
    def outcome(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def consolidated_at(self) -> datetime | None: ...
    @property
    def consolidation_run(self) -> str | None: ...
    @property
    def n_events(self) -> int: ...
    @property
    def mean_score(self) -> float | None: ...
    @property
    def n_feedback(self) -> int: ...


@runtime_checkable
class EventView(Protocol):
    """One ordered step of an episode: a message, a tool call or a tool result."""

    @property
    def id(self) -> str: ...
    @property
    def episode_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def content(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> datetime: ...


@runtime_checkable
class FeedbackView(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def episode_id(self) -> str: ...
    @property
    def score(self) -> float | None: ...
    @property
    def label(self) -> str | None: ...
    @property
    def comment(self) -> str | None: ...
    @property
    def source(self) -> str: ...  # human | automatic | evaluator
    @property
    def created_at(self) -> datetime: ...
    @property
    def correction(self) -> str | None: ...  # the right answer, when the agent answered wrong
    @property
    def instruction(self) -> str | None: ...  # how the agent should behave from now on, in every conversation


@runtime_checkable
class DocumentView(Protocol):
    """One version of a knowledge source (a new content hash under the same source is a new version)."""

    @property
    def id(self) -> str: ...
    @property
    def agent(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def title(self) -> str | None: ...
    @property
    def content(self) -> str: ...
    @property
    def content_hash(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def consolidated_at(self) -> datetime | None: ...


@runtime_checkable
class ExperienceReader(Protocol):
    """The read side of the experience store that the stages need, plus marking what was consolidated.

    Reads hand back detached, frozen records. Unknown episode ids raise NotFoundError naming the id.
    """

    def episodes(self, **filters: Any) -> Sequence[EpisodeView]:
        """Episodes oldest first (``newest_first``), ties by id. Filters, all optional and combined with AND:
        ``agent``, ``thread_id``, ``since`` (started at or after) / ``until`` (started before), ``status``,
        ``outcome``, ``feedback_label`` (has feedback with it), ``min_score`` / ``max_score`` (on the mean
        score; episodes without one never match), ``has_feedback``, ``unconsolidated``, ``limit``."""
        ...

    def events(self, episode_id: str, /) -> Sequence[EventView]:
        """The episode's events in ``seq`` order."""
        ...

    def feedback(self, episode_id: str, /) -> Sequence[FeedbackView]:
        """The episode's feedback, oldest first."""
        ...

    def documents(self, *, agent: str | None = None, source: str | None = None, latest_only: bool = True,
                  unconsolidated: bool = False, since: datetime | None = None) -> Sequence[DocumentView]:
        """Documents oldest first; ``latest_only`` keeps each source's newest version, then the filters apply."""
        ...

    def mark_consolidated(self, episode_ids: Sequence[str], run_id: str, /) -> int:
        """Flag episodes as consolidated by run ``run_id``; returns how many exist (unknown ids are skipped)."""
        ...

    def mark_documents_consolidated(self, document_ids: Sequence[str], run_id: str, /) -> int:
        """Flag document versions as internalised by run ``run_id``; returns how many exist (unknown ids skipped)."""
        ...


# ---------------------------------------------------------------- selecting


@runtime_checkable
class Identified(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=Identified)


@dataclass(frozen=True)
class Decision:
    """Why one candidate item was kept or dropped, and by which selector."""

    item: str  # the item's id
    kept: bool
    reason: str
    selector: str


@dataclass(frozen=True)
class Selection(Generic[T]):
    """What a selector kept, in input order, and one decision per item it was given."""

    kept: tuple[T, ...]
    decisions: tuple[Decision, ...]


@runtime_checkable
class Selector(Protocol[T]):
    """A pure step over candidate items (episodes, documents): same input, same selection; writes nothing.

    Selectors chain: the next one reads the previous one's ``kept``.
    """

    @property
    def name(self) -> str: ...

    def select(self, items: Iterable[T], /) -> Selection[T]: ...


# ---------------------------------------------------------------- generating


class Probe(BaseModel):
    """A question about the material, with the expected answer when one is known."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str = Field(min_length=1)
    answer: str | None = None


class GenerationRequest(BaseModel):
    """What a generator turns into an adapter. Each generator reads the fields it needs and says
    which it misses: ``d2l`` one document or several (one adapter of them all); ``gradient_cd`` one
    document and probes to train on; ``sft`` conversations (chat messages ``{"role", "content"}``,
    assistant ones optionally with ``"tool_calls": [{"name", "arguments"}]``); ``t2l`` a description.
    ``budget_seconds`` caps the time spent training, for generators that train."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    documents: tuple[str, ...] = ()
    conversations: tuple[tuple[dict[str, Any], ...], ...] = ()
    description: str | None = None
    probes: tuple[Probe, ...] = ()
    budget_seconds: float | None = Field(default=None, gt=0)

    @field_validator("probes", mode="before")
    @classmethod
    def _questions(cls, value: Any) -> Any:
        if isinstance(value, (str, Mapping)):
            return value  # pydantic reports a single probe where a sequence belongs
        return tuple({"question": p} if isinstance(p, str) else p for p in value)

    def single_document(self, generator: str) -> str:
        """The one document, or InvalidInputError saying ``generator`` needs exactly one."""
        if len(self.documents) != 1:
            raise InvalidInputError(
                f"generator {generator!r} turns one document into one adapter; the request has {len(self.documents)}"
            )
        return self.documents[0]


@runtime_checkable
class AdapterWeights(Protocol):
    """A LoRA in memory (:class:`~agent_sleep.generators.result.GeneratedAdapter` and its subclasses)."""

    @property
    def tensors(self) -> Mapping[str, Any]: ...  # PEFT-keyed CPU tensors
    @property
    def lora_config(self) -> Mapping[str, Any]: ...  # the adapter_config.json to save them with
    @property
    def rank(self) -> int: ...
    @property
    def seconds(self) -> float: ...


R = TypeVar("R", bound=AdapterWeights)


@runtime_checkable
class Generator(Protocol[R]):
    """Turns a :class:`GenerationRequest` into a LoRA in memory, then writes it as a PEFT folder.

    ``generate`` writes nothing and registers nothing; ``write`` makes a folder (PEFT files plus a
    manifest naming the generator and its version) that the registry takes in as a *candidate*.
    """

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...

    def generate(self, request: GenerationRequest, /) -> R: ...

    def write(self, result: R, dest: str | Path, /, *, sources: Mapping[str, Any] | None = None,
              skill: str | None = None) -> Path: ...  # fmt: skip


@runtime_checkable
class SectionedGenerator(Protocol):
    """A generator that can keep every chunk of a long document as a routed section (``d2l``) instead of capping
    them: ``sections`` on makes it so. Only a router serves sections, so the sleep cycle turns it on for the
    generators whose adapters it routes, unless the user's settings for that generator name ``sections``."""

    sections: bool


# ---------------------------------------------------------------- evaluating and gating

SuiteRole = Literal["target", "guard", "interference"]
"""What a suite checks in one run: the skill being learned (``target``), general ability that must
not drop (``guard``), or skills already live that a new adapter must not break (``interference``)."""


@dataclass(frozen=True)
class EvalResult:
    """Scores of one stack on one suite (``metrics``: name -> value, the suite says which way is better).

    ``scores`` holds one score per item id (1.0 right, 0.0 wrong for the lm-eval suites), so a gate
    can compare two stacks item by item; ``artifact`` names the file with the raw results, if any.
    """

    suite: str
    stack: tuple[tuple[str, float], ...]  # (adapter, weight); () is the base model
    metrics: Mapping[str, float]
    samples: int
    seconds: float
    scores: Mapping[str, float] = field(default_factory=dict)
    artifact: str | None = None


@runtime_checkable
class Evaluator(Protocol):
    """Scores a stack of adapters on a named suite; changes nothing that is live."""

    @property
    def name(self) -> str: ...

    def evaluate(self, stack: StackRefs, suite: str, /) -> EvalResult: ...


@dataclass(frozen=True)
class SuiteComparison:
    """Candidate against baseline on one suite's shared items: means, the mean paired difference and
    its confidence interval (``ci_low``..``ci_high``), and whether the suite's check passed."""

    suite: str
    role: SuiteRole
    n: int
    candidate: float
    baseline: float
    delta: float
    ci_low: float
    ci_high: float
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be deployed, and why (every reason, not only the first), with the numbers."""

    status: Literal["admitted", "rejected"]
    reasons: tuple[str, ...] = ()
    comparisons: tuple[SuiteComparison, ...] = ()

    @property
    def admitted(self) -> bool:
        return self.status == "admitted"


@runtime_checkable
class Gate(Protocol):
    """Compares the candidate stack's results with the live stack's, suite by suite (keyed by suite name)."""

    def decide(self, candidate: Mapping[str, EvalResult], baseline: Mapping[str, EvalResult], /) -> GateDecision: ...


# ---------------------------------------------------------------- deploying


@runtime_checkable
class StackItemView(Protocol):
    @property
    def adapter(self) -> str: ...  # skill@vN
    @property
    def weight(self) -> float: ...


@runtime_checkable
class StackView(Protocol):
    @property
    def name(self) -> str: ...  # agent:stack@vN
    @property
    def items(self) -> Sequence[StackItemView]: ...


@runtime_checkable
class DeploymentView(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def stack(self) -> StackView: ...


@runtime_checkable
class LiveView(Protocol):
    """What is live for one agent."""

    @property
    def deployment(self) -> DeploymentView: ...
    @property
    def version(self) -> str: ...  # names the stack and the deployment, for logs and answers


@runtime_checkable
class DeployResult(Protocol):
    """How a deploy request ended: ``deployed``, or ``rejected`` with the reason (nothing changed)."""

    @property
    def status(self) -> Literal["deployed", "rejected"]: ...
    @property
    def reason(self) -> str | None: ...


@runtime_checkable
class DeployTarget(Protocol):
    """Makes a stack live for an agent, takes it back, and says what is live.

    Only a deploy makes an adapter live; generation and evaluation leave it a candidate.
    """

    def deploy(self, agent: str, target: str | StackRefs, /, *, actor: str = ..., reason: str = ...,
               run_id: str | None = ..., expected_seq: int | None = ...) -> DeployResult: ...  # fmt: skip

    def rollback(self, agent: str, /, *, to: str | None = ..., actor: str = ..., reason: str = ...) -> DeployResult: ...

    def live(self, agent: str, /) -> LiveView | None: ...
