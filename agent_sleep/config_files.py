"""Config files users write: one YAML mapping read with clear errors, and pydantic errors as lines.

Every loader of a user config (the cycle's, the scheduler's, the online guard's) reads its file with
:func:`read_yaml_mapping` and lists a model's validation errors with :func:`validation_problems`, so
a broken file reads the same whichever config it is: the file, the line and column of a YAML error,
and every field that is wrong at once (``gate.min_target_gain: Input should be ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent_sleep.errors import ConfigError

__all__ = ["error_location", "read_yaml_mapping", "validation_problems"]


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping in YAML (or JSON) file ``path`` (an empty file: ``{}``); ``what`` names the config in errors
    ("cycle config"). Raises ConfigError for a file that cannot be read, is not YAML, or is not a mapping."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must be a mapping of settings, got {type(raw).__name__}")
    return raw


def error_location(error: Any) -> str:
    """Where one pydantic error is, as a dotted path (``gate.max_guard_loss``)."""
    return ".".join(str(p) for p in error["loc"]) or "value"


def validation_problems(exc: ValidationError) -> list[str]:
    """Each error of ``exc`` as an indented ``path: message`` line."""
    return [f"  {error_location(e)}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
