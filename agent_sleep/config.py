"""Settings read from the environment (``AGENT_SLEEP_*``) with safe defaults.

Nothing here imports torch or opens a database; it only decides *where* things
live. Database URLs and secrets come from the environment, never from files
committed to a repository.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "smollm2-135m-instruct"


def _default_data_dir() -> Path:
    return Path(os.environ.get("AGENT_SLEEP_DATA_DIR", Path.cwd() / ".agent_sleep"))


def _default_cache_dir() -> Path:
    base = os.environ.get("AGENT_SLEEP_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "agent-sleep"


class Settings(BaseModel):
    """Where agent-sleep keeps its data, and the limits it enforces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default_factory=lambda: os.environ.get("AGENT_SLEEP_DATABASE_URL") or None,
        description="SQLAlchemy URL; default: SQLite file experience.sqlite in data_dir.",
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    model: str = Field(default_factory=lambda: os.environ.get("AGENT_SLEEP_MODEL", DEFAULT_MODEL))
    max_payload_bytes: int = Field(
        default_factory=lambda: int(os.environ.get("AGENT_SLEEP_MAX_PAYLOAD_BYTES", 1_000_000)),
        gt=0,
        description="Largest event content + payload accepted, in UTF-8 bytes.",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'experience.sqlite').resolve()}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
