"""What one sleep cycle may do, as a user writes it: a YAML file read into :class:`CycleConfig`.

Every field has a default, so an empty file (or no file) is a valid config. Unknown keys and bad
values are refused, all of them at once, in one :class:`~agent_sleep.errors.ConfigError` naming the
file and each field (``gate.min_target_gain: Input should be less than or equal to 1``).

``selection`` is handed to the planner as written (the selectors own its schema); ``generators``
names each generator's time budget and knobs (``sft``'s are :class:`~agent_sleep.generators.sft.SFTSettings`,
``gradient_cd``'s :class:`~agent_sleep.generators.gradient_cd.CDSettings`, other generators take them
as loader keyword arguments). Not here: running anything (:mod:`.cycle`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_sleep.config_files import error_location, read_yaml_mapping, validation_problems
from agent_sleep.errors import ConfigError
from agent_sleep.selectors.config import parse_selection_config
from agent_sleep.evaluation.gate import GatePolicy
from agent_sleep.generators.d2l import ROUTING_NAME_BONUS, ROUTING_THRESHOLD
from agent_sleep.generators.registry import available_generators
from agent_sleep.names import check_agent_name, did_you_mean

__all__ = [
    "CycleConfig", "EvaluationSettings", "GeneratorSettings", "RoutingSettings", "generator_settings_class",
    "load_cycle_config",
]  # fmt: skip

# Generators whose knobs are a pydantic model passed to their loader as ``config=``.
_SETTINGS_CLASSES = {
    "sft": "agent_sleep.generators.sft:SFTSettings",
    "gradient_cd": "agent_sleep.generators.gradient_cd:CDSettings",
}


def generator_settings_class(name: str) -> type[BaseModel] | None:
    """The settings model of generator ``name`` (None: its settings are loader keyword arguments)."""
    target = _SETTINGS_CLASSES.get(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    cls: type[BaseModel] = getattr(importlib.import_module(module), attr)
    return cls


class _Forbid(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GeneratorSettings(_Forbid):
    """One generator's part of a cycle: its training time per skill, and its own knobs."""

    budget_seconds: float | None = Field(default=None, gt=0)
    """Training time per skill (the run's remaining budget may cut it shorter); None: 90 s
    (:data:`~agent_sleep.consolidation.generation.DEFAULT_TRAINING_SECONDS`)."""
    settings: dict[str, Any] = Field(default_factory=dict)


class EvaluationSettings(_Forbid):
    """How big the gate's suites are. Each item costs about a second per stack on a 2-core CPU."""

    guard_limit: int | None = Field(default=16, ge=1)
    """Seeded items per shipped guard suite (three suites: 48 items); None: all 256."""
    guards: Path | None = None
    """A folder of guard suites (``*.jsonl``) instead of the shipped ``evals/guards`` (relative: to the config file)."""
    interference_limit: int | None = Field(default=16, ge=1)
    """Seeded probes per skill already live for the agent; None: all."""
    min_probes: int = Field(default=2, ge=1)
    """A skill with fewer held-out probes is not trained: nothing could show that it helps."""
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
    candidate_weights: tuple[float, ...] = Field(default=(1.0,), min_length=1, max_length=4)
    """The stack weights a new version is tried at, in order, until the gate admits one (each costs one
    more scoring of the stack). A LoRA learned to convergence on a few conversations often does its job at
    half strength and disturbs much less; see ``evals/bench_retain.py``."""

    @field_validator("candidate_weights")
    @classmethod
    def _weights(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < w <= 4 for w in value):
            raise ValueError("each candidate weight must be in (0, 4]")
        if len(set(value)) != len(value):
            raise ValueError("candidate weights must not repeat")
        return value


class RoutingSettings(_Forbid):
    """Per-request routing of the night's adapters (:mod:`agent_sleep.runtime.routing`): each adapter made by
    one of ``generators`` applies only to requests whose last user message resembles the skill's material
    (the user questions of its training conversations, else its documents' sentences, else its description),
    at cosine similarity >= ``threshold``. The gate scores it the same way: on an item where it does not fire,
    the candidate answers as the stack it would join."""

    threshold: float = Field(default=0.55, ge=-1.0, le=1.0)
    thresholds: dict[str, float] = Field(default_factory=lambda: {"d2l": ROUTING_THRESHOLD})
    """A generator's own threshold; the others use ``threshold``. ``d2l`` defaults to 0.45: a question about a
    page is worded less like its sentences than a corrected conversation's is like its questions, and with a
    routing group only the closest document's adapter applies anyway. Three documents a night keep 92-100 % of
    their solo accuracy at 0.45 against 79-100 % at 0.55, and fire on ~1.3 % of the guard suites' questions
    (chosen on generated prose-like pages and the hand-written validation pages;
    ``evals/results/d2l_multi_tune_t0*.md``, ``d2l_multi_words1_t0*.md``). A ``thresholds`` block in a config
    replaces this default as a whole: name ``d2l`` in it to keep 0.45."""
    name_bonus: dict[str, float] = Field(default_factory=lambda: {"d2l": ROUTING_NAME_BONUS})
    """Per generator, what a request that names a rare name the adapter's keys hold (an invented organisation,
    product or place: a word the encoder's vocabulary lacks, capitalised mid-sentence) adds to its similarity; the
    others get 0. ``d2l`` defaults to 0.1: a question names the page's organisation while its other words differ
    from the statement's ("the side-door keypad of Ravdell Mills" against "Ravdell Mills set its alarm to ...",
    cosine 0.40-0.49). On the hand-written validation pages the own adapter fired on 97 % of the questions instead
    of 96 %, with the guard suites' questions firing no more than before (``pipelines/d2l/EXPERIMENTS.md``). A
    ``name_bonus`` block replaces this default as a whole."""
    generators: tuple[str, ...] = ("sft", "t2l", "d2l", "gradient_cd")
    max_keys: int = Field(default=256, ge=1)
    exclusive: tuple[str, ...] = ("d2l",)
    """Generators whose routed adapters compete (a routing ``group`` per generator): when several fire on one
    request, only the closest applies. A question is about one document, and one document's adapter answers
    better alone than stacked with the others that fire (``evals/results/d2l_multi.md``)."""

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for generator, threshold in value.items():
            if not -1.0 <= threshold <= 1.0:
                raise ValueError(f"routing threshold for {generator!r} must be a cosine in [-1, 1], got {threshold}")
        return value

    @field_validator("name_bonus")
    @classmethod
    def _bonus_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for generator, bonus in value.items():
            if not 0.0 <= bonus <= 1.0:
                raise ValueError(f"routing name_bonus for {generator!r} must be in [0, 1], got {bonus}")
        return value

    @model_validator(mode="after")
    def _thresholds_of_routed(self) -> RoutingSettings:
        for field in ("thresholds", "name_bonus"):  # the defaults name generators a config may not route
            stray = sorted(set(getattr(self, field)) - set(self.generators))
            if stray and field in self.model_fields_set:
                raise ValueError(f"routing {field} name {stray}, which are not routed (generators: "
                                 f"{list(self.generators)})")
        return self

    def threshold_for(self, generator: str) -> float:
        """The routing threshold written for ``generator``'s adapters."""
        return self.thresholds.get(generator, self.threshold)

    def name_bonus_for(self, generator: str) -> float:
        """The name bonus written for ``generator``'s adapters (0: none)."""
        return self.name_bonus.get(generator, 0.0)


class CycleConfig(_Forbid):
    """One sleep cycle's settings (see the module docstring)."""

    agent: str | None = None
    """The agent, when the config is for one (the CLI's ``--agent`` must then agree)."""
    selection: dict[str, Any] = Field(default_factory=dict)
    generators: dict[str, GeneratorSettings] = Field(default_factory=dict)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    routing: RoutingSettings | None = Field(default_factory=lambda: RoutingSettings(generators=("d2l",)))
    """Default: the ``d2l`` adapters are routed, the others apply to every request. A night's documents become one
    ``d2l`` adapter each (``skills.per_document``); stacked unrouted, 3 of them keep ~10 % of their solo accuracy,
    each routed by its document's sentences 84-98 % (``evals/bench_d2l_multi.py``, ``evals/results/d2l_multi.md``).
    A routed ``d2l`` generator also keeps a long document's every chunk as a routed section (``sections``, unless
    its settings name ``sections``): a question reads the chunk closest to it instead of the 4 highest-gate chunks.
    A ``routing`` block routes the generators it names (all of them unless it says); null: no adapter is routed."""
    budget_seconds: float = Field(default=3600.0, gt=0)
    """Wall time for the whole run (select to deploy) across resumes; what is not evaluated in time is skipped."""
    max_delta_norm: float | None = Field(default=None, gt=0)
    """The validation bound for candidate adapters and the deployed stack, for the runtime a run makes itself
    (a runtime handed to :func:`~.cycle.run_cycle` keeps its own); None: the validation default."""
    stale_after_seconds: float = Field(default=300.0, gt=0)
    """A running run whose owner has not sent a heartbeat for this long is taken over by the next cycle."""

    @field_validator("agent")
    @classmethod
    def _agent_name(cls, value: str | None) -> str | None:
        return None if value is None else check_agent_name(value)

    @field_validator("generators")
    @classmethod
    def _known_generators(cls, value: dict[str, GeneratorSettings]) -> dict[str, GeneratorSettings]:
        known = available_generators()
        problems = [f"unknown generator {n!r}{did_you_mean(n, known)} (available: {', '.join(known)})"
                    for n in value if n not in known]  # fmt: skip
        for name, gen in value.items():
            settings_cls = generator_settings_class(name) if name in known else None
            if settings_cls is None:
                continue
            try:
                settings_cls.model_validate(gen.settings)
            except ValidationError as exc:
                problems += [f"{name}.settings.{error_location(e)}: {e['msg']}" for e in exc.errors()]
        if problems:
            raise ValueError("\n    ".join(problems))
        return value

    def generator(self, name: str) -> GeneratorSettings:
        return self.generators.get(name) or GeneratorSettings()


def load_cycle_config(path: str | Path | None = None, **overrides: Any) -> CycleConfig:
    """The config in YAML (or JSON) file ``path`` (None: all defaults), with top-level ``overrides`` on top."""
    raw: Any = {}
    where = "cycle config"
    if path is not None:
        path = Path(path)
        where = str(path)
        raw = read_yaml_mapping(path, "cycle config")
        evaluation = raw.get("evaluation")
        guards = evaluation.get("guards") if isinstance(evaluation, dict) else None
        if isinstance(guards, str) and not Path(guards).expanduser().is_absolute():  # a folder beside the config
            raw["evaluation"] = {**evaluation, "guards": str(path.parent / guards)}  # type: ignore[dict-item]
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    problems: list[str] = []
    selection = raw.get("selection")
    if isinstance(selection, dict):  # the selectors' schema, checked now so that every problem shows at once
        try:
            parse_selection_config(selection, where="selection")
        except ConfigError as exc:
            problems += [f"  selection.{line.strip()}" for line in str(exc).splitlines()[1:]]
    try:
        config = CycleConfig.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc) + problems
    if problems:
        raise ConfigError(f"{where} is not a valid cycle config:\n" + "\n".join(problems)) from None
    return config
