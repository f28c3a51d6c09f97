"""The provenance record stored beside every adapter (``manifest.json``), and adapter names.

An adapter folder is a standard PEFT folder plus this manifest. The manifest
says what the adapter is (skill and version), who made it (generator), for
which base weights (content hash), from what (episodes, documents), and pins
the weight bytes with a sha256 so a changed file is noticed before it goes
live. Newer keys are kept on a round trip, so an older agent-sleep can read
and re-save what a newer one wrote.

This module does not touch tensors or files; :mod:`agent_sleep.adapters.artifact`
reads and writes folders.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_sleep.errors import AdapterFormatError
from agent_sleep.names import check_name as _check_name

__all__ = [
    "FORMAT_VERSION", "AdapterManifest", "AdapterSources", "BaseModelRef", "GeneratorInfo", "RoutedSection",
    "RoutingSpec", "check_name",
]  # fmt: skip

FORMAT_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_name(name: str) -> str:
    """Return ``name`` if it can name a skill (and a folder); raise AdapterFormatError otherwise.

    The rule is :func:`agent_sleep.names.check_name`'s, the same for agents and skills.
    """
    return _check_name(name, "adapter/skill name", error=AdapterFormatError)


def _agent_sleep_version() -> str:
    from agent_sleep._version import __version__

    return __version__


class _Record(BaseModel):
    # Stored records keep keys they do not know, so old code re-saves new manifests losslessly.
    model_config = ConfigDict(extra="allow", frozen=True)


class GeneratorInfo(_Record):
    """What produced the weights: ``t2l``, ``d2l``, ``sft``, ``merged``, ... and its version."""

    name: str
    version: str = "0"


class BaseModelRef(_Record):
    """The base model the adapter was made for; ``content_hash`` is what compatibility checks use."""

    id: str
    content_hash: str


class AdapterSources(_Record):
    """Where the knowledge came from (experience-store ids, document ids, a free-text task)."""

    episodes: list[str] = Field(default_factory=list)
    documents: list[str] = Field(default_factory=list)
    description: str | None = None
    run: str | None = None


class RoutedSection(_Record):
    """A slice of an adapter's rank that answers requests resembling ``keys``: rank rows ``[start, stop)`` of every
    module (a long document's chunk, in a ``d2l`` adapter)."""

    start: int = Field(ge=0)
    stop: int = Field(gt=0)
    keys: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _span(self) -> RoutedSection:
        if self.stop <= self.start:
            raise ValueError(f"a section's rank rows [start, stop) must not be empty, got [{self.start}, {self.stop})")
        if any(not k.strip() for k in self.keys):
            raise ValueError("section keys must be non-empty texts")
        return self


class RoutingSpec(_Record):
    """When the adapter applies: only to requests whose last user message resembles one of ``keys``.

    The runtime embeds the request and the keys with ``encoder`` (sentence embeddings, cosine
    similarity) and applies the adapter when the best match reaches ``threshold`` (and, with a ``group``, no
    adapter of its group matches better); otherwise the request runs as if the adapter were not in the stack. An
    adapter without a spec always applies.

    With ``sections`` (disjoint slices of the rank, each with its own keys), a request the adapter applies to gets
    only the section whose keys are closest to it, plus the rank rows no section claims (a D2L adapter's bias
    block); the adapter's own match is the best over ``keys`` and every section's keys. A long document then keeps
    every chunk in one adapter, and each question reads the chunk it is about instead of all of them summed
    (:mod:`agent_sleep.runtime.routing`).
    """

    encoder: str = "all-MiniLM-L6-v2"
    threshold: float = Field(default=0.55, ge=-1.0, le=1.0)
    keys: list[str] = Field(min_length=1)
    group: str | None = None
    """Routed adapters of one group compete: when several fire on a request, only the one whose keys are closest
    applies (one document's adapter per question instead of all of them stacked). None: it competes with none."""
    sections: list[RoutedSection] = Field(default_factory=list)
    name_bonus: float = Field(default=0.0, ge=0.0, le=1.0)
    """Added to the adapter's best similarity to a request that names a rare name its keys hold (a word the
    encoder's vocabulary lacks, capitalised mid-sentence: :func:`agent_sleep.key_terms.rare_names`): a question
    about the organisation a document describes, worded unlike its sentences, still reaches it. It decides whether
    the adapter applies and which of a group does; a section is still picked by similarity alone. 0: keys only."""

    @field_validator("keys")
    @classmethod
    def _texts(cls, value: list[str]) -> list[str]:
        if any(not k.strip() for k in value):
            raise ValueError("routing keys must be non-empty texts")
        return value

    @field_validator("sections")
    @classmethod
    def _disjoint(cls, value: list[RoutedSection]) -> list[RoutedSection]:
        spans = sorted((s.start, s.stop) for s in value)
        for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
            if start < stop:
                raise ValueError(f"routed sections overlap: rank rows {spans}")
        if len(value) == 1:
            raise ValueError("one section is the whole routed part: write none, or two or more")
        return value


class AdapterManifest(_Record):
    """Contents of ``manifest.json``.

    ``rank``, ``lora_alpha``, ``target_modules`` and ``weights_sha256`` are
    filled in by :func:`agent_sleep.adapters.artifact.write_adapter` from the
    PEFT config and the written bytes; values given here are overwritten.
    """

    format_version: int = FORMAT_VERSION
    agent_sleep_version: str = Field(default_factory=_agent_sleep_version)
    skill: str | None = None
    version: int | None = None
    generator: GeneratorInfo
    base_model: BaseModelRef
    rank: int = 0
    lora_alpha: float = 0.0
    target_modules: list[str] = Field(default_factory=list)
    sources: AdapterSources = Field(default_factory=AdapterSources)
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    weights_sha256: str = ""
    eval_summary: dict[str, Any] | None = None
    routing: RoutingSpec | None = None
    """When set, the runtime applies the adapter only to requests like its keys (see :class:`RoutingSpec`)."""

    @field_validator("skill")
    @classmethod
    def _skill_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator("version")
    @classmethod
    def _positive_version(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"version must be >= 1, got {value}")
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        # A naive timestamp is ambiguous across machines; refuse it rather than guess the zone.
        if value.tzinfo is None:
            raise ValueError("created_at must carry a time zone (use UTC)")
        return value.astimezone(dt.UTC)

    @field_validator("weights_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if value and not _SHA256.fullmatch(value):
            raise ValueError("weights_sha256 must be 64 lowercase hex digits")
        return value
