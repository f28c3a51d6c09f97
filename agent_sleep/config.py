"""Settings read from the environment (``AGENT_SLEEP_*``) with safe defaults.

Nothing here imports torch or opens a database; it only decides *where* things
live. Database URLs and secrets come from the environment, never from files
committed to a repository. pydantic-settings parses the environment, so a bad
value (``AGENT_SLEEP_MAX_PAYLOAD_BYTES=abc``) raises
:class:`~agent_sleep.errors.ConfigError` naming the variable; explicit keyword
arguments win over the environment and are validated as usual.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from agent_sleep.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
ENV_PREFIX = "AGENT_SLEEP_"
# An empty value of these variables means "not set" (the default applies), as it always has.
_EMPTY_IS_UNSET = frozenset({"database_url", "cache_dir", "artifact_root"})


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "agent-sleep"


class _EnvSource(EnvSettingsSource):
    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        return {k: v for k, v in values.items() if not (k in _EMPTY_IS_UNSET and v == "")}


class Settings(BaseSettings):
    """Where agent-sleep keeps its data, and the limits it enforces.

    Each field ``name`` is read from ``AGENT_SLEEP_<NAME>`` unless passed explicitly.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix=ENV_PREFIX)

    data_dir: Path = Field(default_factory=lambda: Path.cwd() / ".agent_sleep")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file experience.sqlite in data_dir.",
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    artifact_root: Path | None = Field(
        default=None,
        description="Folder of registered adapter versions; default: adapters/ in data_dir. Registry rows "
        "store paths relative to it, so hosts sharing one database each mount the folders where they like.",
    )
    model: str = DEFAULT_MODEL
    max_payload_bytes: int = Field(
        default=1_000_000,
        gt=0,
        description="Largest event content + payload accepted, in UTF-8 bytes.",
    )
    max_document_bytes: int = Field(
        default=10_000_000,
        gt=0,
        description="Largest document file read by `documents add` and `internalize`, in bytes.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            from_env = [e for e in exc.errors() if e["loc"] and e["loc"][0] not in values]
            if not from_env:
                raise  # only explicit arguments were bad: pydantic's own error, as for any model
            problems = [_describe(e, explicit=e["loc"][0] in values) for e in exc.errors()]
            raise ConfigError("invalid settings: " + "; ".join(problems)) from exc

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only keyword arguments and the process environment: no .env or secrets files.
        return init_settings, _EnvSource(settings_cls)

    @property
    def resolved_artifact_root(self) -> Path:
        """``artifact_root`` if set, else ``<data_dir>/adapters``; absolute."""
        root = self.artifact_root if self.artifact_root is not None else self.data_dir / "adapters"
        return root.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'experience.sqlite').resolve()}"


def _describe(error: Any, *, explicit: bool) -> str:
    field = str(error["loc"][0])
    where = field if explicit else f"{ENV_PREFIX}{field.upper()}={error['input']!r}"
    return f"{where}: {error['msg']}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
