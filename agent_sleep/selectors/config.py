"""What a user writes to steer selection: the chain, how material maps to skills, how probes are held out.

:class:`SelectionConfig` is frozen and refuses unknown keys; every selector's ``params`` are checked
against that selector's own model, and a YAML file with several mistakes gets them all in one
ConfigError, each with its path (``chain[2].params.min_score: ...``). :func:`load_selection_config`
reads a YAML file; :func:`parse_selection_config` takes the mapping (e.g. a section of a bigger file).

Skills, by default: one ``d2l`` skill per new or changed document source, named ``{agent}-{slug}``
(``kb/returns.md`` -> ``helpdesk-kb-returns``), and one ``sft`` skill ``{agent}-dialog`` for the kept
conversations, whose description is the instructions of the kept feedback (``agent-sleep feedback
--instruction``). Declared skills take the documents whose source matches one of their globs (the first
declared match wins), or, for an ``sft`` skill, the conversations; a ``t2l`` skill learns its
``description`` alone and is tested on the dialog skill's held-out probes (copies of them: the dialog
skill trains on none of them, the t2l skill on its description only, so no probe is trained on; without
a dialog skill, or with too few of its probes, it is not trained).

``candidates`` (on a declared skill) names the generators a run tries on the same material and probes;
the gate judges each and the better admitted one goes live. Unset, the planner's rule applies: ``[sft,
t2l]`` for a skill with conversations and a description (the dialog skill once feedback gave an
instruction, or a declared sft skill with a description), ``[t2l]`` for a description alone, else the
skill's ``generator``. A candidate the material cannot feed (t2l without a description) is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agent_sleep.errors import ConfigError
from agent_sleep.interfaces import Selector
from agent_sleep.names import check_name, did_you_mean
from agent_sleep.selectors.base import SelectorContext
from agent_sleep.selectors.registry import available_selectors, build_selector, selector_class, unknown_selector

__all__ = [
    "DEFAULT_CHAIN", "ProbesConfig", "SelectionConfig", "SelectorSpec", "SkillSpec", "SkillsConfig",
    "config_problems", "default_chain", "load_selection_config", "parse_selection_config",
]  # fmt: skip

DEFAULT_CHAIN = ("recency", "outcome", "feedback", "near_dup", "budget", "prompts", "redact", "corrections",
                 "novelty")
"""The default order: cheap filters first (they read text in memory only and write nothing but ids and
reasons), the budget next so that the costly steps see at most ``max_episodes`` items; the system
prompt each episode's final answer was given (``prompts``, read from the store); then redaction,
before anything that can reach weights or reports (the corrected conversation, the plan); the
correction; novelty (MiniLM embeddings, ~50 texts/s on this CPU) last. Redacting everything first
would cost ~90 s per 100,000 episodes for items the filters drop anyway."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SelectorSpec(_Frozen):
    """One step of the chain: a registered selector name and its params (a bare name means default params)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known_with_valid_params(self) -> SelectorSpec:
        if self.name not in available_selectors():
            raise PydanticCustomError("selector", "{message}", {"message": unknown_selector(self.name),
                                                                "problems": [(("name",), unknown_selector(self.name))]})
        model = selector_class(self.name).Params
        try:
            model.model_validate(self.params)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                msg = str(err["msg"]).removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = f"unknown param{did_you_mean(str(err['loc'][-1]), model.model_fields)} (known: " \
                          f"{', '.join(model.model_fields) or 'none'})"
                problems.append((("params", *err["loc"]), msg))
            raise PydanticCustomError("selector", "{message}", {
                "message": "; ".join(f"{_path(p)}: {m}" for p, m in problems), "problems": problems}) from None
        return self

    def build(self, context: SelectorContext) -> Selector[Any]:
        return build_selector(self.name, self.params, context)


def default_chain() -> tuple[SelectorSpec, ...]:
    """:data:`DEFAULT_CHAIN`, without the names no selector is registered for."""
    known = set(available_selectors())
    return tuple(SelectorSpec(name=n) for n in DEFAULT_CHAIN if n in known)


GeneratorName = Literal["d2l", "gradient_cd", "sft", "t2l"]
_FEEDS: dict[str, str] = {"sft": "conversations", "d2l": "documents", "gradient_cd": "documents", "t2l": "description"}
"""What each generator learns from; a skill's material must feed every candidate."""


def _skill_name_template(value: str) -> str:
    """``value`` if it makes a valid skill name once ``{agent}`` is filled in."""
    try:
        filled = value.format(agent="agent")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad placeholder {exc} (the only placeholder is {{agent}})") from None
    check_name(filled, "skill name")
    return value


class SkillSpec(_Frozen):
    """A skill a user declares: its generator, a description, and the document sources it learns from
    (glob patterns, ``*`` crossing ``/``), or, for ``sft``, the kept conversations, or, for ``t2l``, the
    description alone. ``candidates``: the generators to try on the same material and probes (see the
    module docstring; None: the planner's rule)."""

    name: str  # may use {agent}
    generator: GeneratorName
    description: str = ""
    documents: tuple[str, ...] = ()
    candidates: tuple[GeneratorName, ...] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _skill_name_template(value)

    @model_validator(mode="after")
    def _material(self) -> SkillSpec:
        problems = []
        if self.generator == "sft" and self.documents:
            problems.append("an sft skill trains on the kept conversations, not on documents: drop 'documents'")
        if self.generator == "t2l":
            if self.documents:
                problems.append("a t2l skill learns its description, not documents: drop 'documents'")
            if not self.description.strip():
                problems.append("a t2l skill learns its description: give 'description'")
        elif self.generator != "sft" and not self.documents:
            problems.append(f"a {self.generator} skill learns documents: give 'documents' (source globs)")
        if self.candidates is not None:
            problems += self._candidate_problems(self.candidates)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _candidate_problems(self, candidates: tuple[str, ...]) -> list[str]:
        problems = []
        if not candidates:
            problems.append("candidates: name at least one generator (or leave it out for the default rule)")
        twice = sorted({c for c in candidates if candidates.count(c) > 1})
        if twice:
            problems.append(f"candidates: each generator once; twice: {twice}")
        if candidates and self.generator not in candidates:
            problems.append(f"candidates: must include the skill's generator {self.generator!r}")
        material = {"sft": "conversations", "t2l": "description"}.get(self.generator, "documents")
        for c in dict.fromkeys(candidates):
            needs = _FEEDS[c]
            # an sft skill's description may come from feedback instructions, so t2l fits it
            fits = needs == material or needs == "description" and (material == "conversations"
                                                                   or bool(self.description.strip()))
            if not fits:
                problems.append(f"candidates: {c} learns from {needs}; a {self.generator} skill has {material}")
        return problems

    @property
    def tried(self) -> tuple[str, ...] | None:
        """The candidates in the order tried: the skill's generator first, then the others as written."""
        if self.candidates is None:
            return None
        return (self.generator, *(c for c in self.candidates if c != self.generator))

    def skill_name(self, agent: str) -> str:
        return check_name(self.name.format(agent=agent), "skill name", error=ConfigError)


class SkillsConfig(_Frozen):
    declared: tuple[SkillSpec, ...] = ()
    per_document: bool = True  # a d2l skill {agent}-{slug} for each new document no declared skill takes
    dialog: str | None = "{agent}-dialog"  # the sft skill of the kept conversations, unless one is declared

    @field_validator("dialog")
    @classmethod
    def _dialog(cls, value: str | None) -> str | None:
        return None if value is None else _skill_name_template(value)

    @model_validator(mode="after")
    def _one_each(self) -> SkillsConfig:
        names = [s.name for s in self.declared]
        twice = sorted({n for n in names if names.count(n) > 1})
        problems = [f"skills declared twice: {twice}"] if twice else []
        if sum(s.generator == "sft" for s in self.declared) > 1:
            problems.append("at most one sft skill: the kept conversations go to one skill")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ProbesConfig(_Frozen):
    """Held-out questions with reference answers, for the evaluate stage; never trained on."""

    fraction: float = Field(default=0.2, ge=0, le=1)  # of corrected (and confirmed) episodes, by a hash of the id
    from_feedback: bool = True  # confirmed answers (mean score >= confirm_min_score) may be probes too
    confirm_min_score: float = Field(default=1.0, allow_inf_nan=False)
    min_answer_overlap: float = Field(default=0.5, gt=0, le=1)  # share of a probe answer's words a d2l skill's
    # documents must hold for the probe to test that skill (else it tests the sft skill)


class SelectionConfig(_Frozen):
    chain: tuple[SelectorSpec, ...] = Field(default_factory=default_chain)
    skills: SkillsConfig = SkillsConfig()
    probes: ProbesConfig = ProbesConfig()
    batch_size: int = Field(default=500, ge=1, le=100_000)  # episodes read from the store at a time

    @field_validator("chain")
    @classmethod
    def _each_once(cls, chain: tuple[SelectorSpec, ...]) -> tuple[SelectorSpec, ...]:
        names = [s.name for s in chain]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"each selector may appear once in the chain; twice: {twice}")
        return chain

    def build_chain(self, context: SelectorContext) -> list[Selector[Any]]:
        """Fresh selectors for one run, in chain order."""
        return [spec.build(context) for spec in self.chain]


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def config_problems(exc: ValidationError) -> list[str]:
    """Every problem of a failed validation, one line each, as ``yaml.path: message``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        problems = (err.get("ctx") or {}).get("problems") if err["type"] == "selector" else None
        if problems:
            lines += [f"{_path(loc + tuple(sub))}: {msg}" for sub, msg in problems]
            continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + did_you_mean(str(loc[-1]), _fields_at(loc[:-1]))
        lines.append(f"{_path(loc)}: {msg}")
    return lines


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model at ``loc`` inside SelectionConfig (for "did you mean")."""
    model: Any = SelectionConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None) if inner else ann
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _named_twice(chain: Any) -> list[str]:
    if not isinstance(chain, list):
        return []
    names = [c if isinstance(c, str) else c.get("name") if isinstance(c, dict) else None for c in chain]
    return sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})


def parse_selection_config(data: Mapping[str, Any], *, where: str = "selection config") -> SelectionConfig:
    """A SelectionConfig from plain data, or one ConfigError listing every problem under ``where``."""
    try:
        return SelectionConfig.model_validate(dict(data))
    except ValidationError as exc:
        lines = config_problems(exc)
        twice = _named_twice(data.get("chain"))
        if twice and not any(line.startswith("chain: ") for line in lines):  # not checked when an entry failed
            lines.insert(0, f"chain: each selector may appear once in the chain; twice: {twice}")
        raise ConfigError(f"{where}: {len(lines)} problem{'s' if len(lines) > 1 else ''}:\n  "
                          + "\n  ".join(lines)) from None


def load_selection_config(path: str | Path) -> SelectionConfig:
    """The SelectionConfig in YAML file ``path`` (an empty file means every default); errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"selection config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top, got {type(raw).__name__}")
    return parse_selection_config(raw, where=str(path))
