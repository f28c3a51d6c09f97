"""What the online guard may do, as a user writes it: a YAML (or JSON) file read into :class:`OnlineGuardConfig`.

Every field has a default, so no file (or an empty one) is a valid config, and by default the
guard is **off**: it checks and reports, but never rolls anything back until ``enabled: true``.
Unknown keys and bad values are refused, all of them at once, in one
:class:`~agent_sleep.errors.ConfigError` naming the file and each field
(``alpha: Input should be less than 0.5``). The file may also be a larger YAML file with the
settings under a top-level ``online_guard:`` key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_sleep.config_files import read_yaml_mapping, validation_problems
from agent_sleep.errors import ConfigError

__all__ = ["GUARD_SIGNALS", "OnlineGuardConfig", "load_guard_config"]

Signal = Literal["score", "success"]
GUARD_SIGNALS: tuple[str, ...] = ("score", "success")
SECTION = "online_guard"


class OnlineGuardConfig(BaseModel):
    """When the online guard rolls a deployment back (see :mod:`agent_sleep.guard`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    """Roll back on a significant drop. Off: checks are made and recorded, nothing is rolled back."""
    signals: tuple[Signal, ...] = GUARD_SIGNALS
    """``score``: per-episode mean feedback score (Welch t test); ``success``: the rate of episodes whose
    outcome is in ``success_outcomes`` among those with an outcome (two-proportion z test)."""
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    """The chance that a deployment which is no worse gets rolled back, over all its checks: each test is
    held to ``alpha / (looks x signals tested)`` (Bonferroni)."""
    min_episodes: int = Field(default=30, ge=2)
    """Episodes with the signal needed on each side before the signal is tested: the first look."""
    max_episodes: int = Field(default=100, ge=2)
    """Episodes with the signal used on each side at most (after the deploy its oldest, before it its
    newest): the last look. Looks double from ``min_episodes`` (30, 60, 100); ``min_episodes ==
    max_episodes`` makes one look, a fixed-sample test at the full ``alpha``."""
    min_drop: float = Field(default=0.05, ge=0.0)
    """A drop smaller than this (in score units; for ``success``, in rate) never rolls back, however
    significant: the effect must matter, not only be detectable."""
    window: Literal["episodes", "same_length"] = "episodes"
    """Which episodes of the previous stack are compared. ``episodes``: the newest ``max_episodes`` it served;
    ``same_length``: of those, only the ones that started at most as long before the deploy as the after
    sample's last episode started after it (the same stretch of time on both sides)."""
    success_outcomes: tuple[str, ...] = ("success", "resolved")
    """Outcome labels that count as a success; any other outcome counts as a failure."""

    @field_validator("signals")
    @classmethod
    def _signals(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"name at least one signal ({', '.join(GUARD_SIGNALS)})")
        if len(set(value)) != len(value):
            raise ValueError("each signal at most once")
        return value

    @field_validator("success_outcomes")
    @classmethod
    def _outcomes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not v.strip() for v in value):
            raise ValueError("name at least one non-empty outcome label")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> OnlineGuardConfig:
        if self.max_episodes < self.min_episodes:
            raise ValueError(f"max_episodes ({self.max_episodes}) must be at least min_episodes ({self.min_episodes})")
        return self


def load_guard_config(path: str | Path | None = None, **overrides: Any) -> OnlineGuardConfig:
    """The config in YAML (or JSON) file ``path`` (None: all defaults), with ``overrides`` (not None) on top."""
    raw: Any = {}
    where = "online guard config"
    if path is not None:
        path = Path(path)
        where = str(path)
        raw = read_yaml_mapping(path, "online guard config")
        if SECTION in raw:
            raw = raw[SECTION] or {}
            where = f"{path} ({SECTION})"
            if not isinstance(raw, dict):
                raise ConfigError(f"{where} must be a mapping of settings, got {type(raw).__name__}")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return OnlineGuardConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where} is not a valid online guard config:\n" + "\n".join(validation_problems(exc))
                          ) from None
