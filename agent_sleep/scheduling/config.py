"""The scheduler's settings, as a user writes them: a YAML file read into :class:`SchedulerConfig`.

```yaml
poll_seconds: 5          # how often triggers and pending requests are checked
lease_seconds: 60        # a worker that stops renewing loses the agent after this long
workers: 1               # agents served at the same time by this process
guard_every_seconds: 300 # how often the online guard checks each agent that has an online_guard section
agents:
  helpdesk:
    config: cycle.yaml   # the cycle config of this agent's runs (relative: to this file)
    schedules:
      - cron: "0 3 * * *"
      - every: 3600
      - after_episodes: 50
      - on_documents: true
    online_guard:        # the online guard's settings (agent_sleep.guard.OnlineGuardConfig), or a file name
      enabled: true      # false (the default): checked and journaled, never rolled back
      min_episodes: 30
```

Every field has a default; an empty file is valid (the schedules then come from the table only).
An agent without ``online_guard`` is not checked by the scheduler at all; with the section (even an
empty one: the guard's defaults, rollbacks off) its live deployment is checked every
``guard_every_seconds`` (:mod:`.guarding`). ``online_guard: guard.yaml`` reads the guard's settings
from that file (relative to this one), the same file ``agent-sleep guard check --config`` takes.
Unknown keys, bad values, a bad crontab, a missing or invalid cycle or guard config: all of them are
listed in one :class:`~agent_sleep.errors.ConfigError` naming the file and each place. The schedules a file
declares are added to the ``schedules`` table when a scheduler starts (once, with stable ids:
:meth:`~.schedules.ScheduleStore.add`); the table stays the source of truth, so removing an entry from
the file does not remove the row (``agent-sleep schedule remove`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_sleep.config_files import read_yaml_mapping, validation_problems
from agent_sleep.errors import ConfigError
from agent_sleep.guard.config import OnlineGuardConfig
from agent_sleep.names import check_agent_name
from agent_sleep.scheduling.schedules import check_spec

__all__ = ["AgentEntry", "ScheduleEntry", "SchedulerConfig", "load_scheduler_config"]


class _Forbid(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScheduleEntry(_Forbid):
    """Exactly one of: ``cron``, ``every`` (seconds), ``after_episodes``, ``on_documents: true``."""

    cron: str | None = None
    every: float | None = None
    after_episodes: int | None = None
    on_documents: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> ScheduleEntry:
        given = [k for k in ("cron", "every", "after_episodes", "on_documents") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cron, every, after_episodes, on_documents"
                             + (f" (got {', '.join(given)})" if given else ""))  # fmt: skip
        problems = check_spec(*self.kind_spec())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def kind_spec(self) -> tuple[str, dict[str, Any]]:
        if self.cron is not None:
            return "cron", {"cron": self.cron}
        if self.every is not None:
            return "interval", {"seconds": self.every}
        if self.after_episodes is not None:
            return "new_episodes", {"min_episodes": self.after_episodes}
        return "documents", {}


class AgentEntry(_Forbid):
    config: Path | None = None
    """The cycle config (YAML) of this agent's runs; None: the defaults."""
    schedules: list[ScheduleEntry] = Field(default_factory=list)
    online_guard: OnlineGuardConfig | None = None
    """The online guard's settings for this agent; None: the scheduler does not check it."""


class SchedulerConfig(_Forbid):
    poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    lease_seconds: float = Field(default=60.0, ge=1, le=86400)
    workers: int = Field(default=1, ge=1, le=64)
    guard_every_seconds: float = Field(default=300.0, gt=0, le=86400)
    """How often each agent with an ``online_guard`` section is checked (a busy agent: at the next poll after)."""
    agents: dict[str, AgentEntry] = Field(default_factory=dict)

    @field_validator("agents")
    @classmethod
    def _names(cls, value: dict[str, AgentEntry]) -> dict[str, AgentEntry]:
        for name in value:
            check_agent_name(name)
        return value


def _relative(base: Path, name: str) -> Path:
    full = Path(name).expanduser()
    return full if full.is_absolute() else base / full


def load_scheduler_config(path: str | Path | None = None, **overrides: Any) -> SchedulerConfig:
    """The config in YAML file ``path`` (None: defaults), with top-level ``overrides`` (None values ignored)."""
    raw: Any = {}
    where = "scheduler config"
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        where, base = str(path), path.resolve().parent
        raw = read_yaml_mapping(path, "scheduler config")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    problems: list[str] = []
    agents = raw.get("agents")
    if isinstance(agents, dict):  # cycle and guard config paths are relative to this file; each must load
        from agent_sleep.consolidation.config import load_cycle_config
        from agent_sleep.guard.config import load_guard_config

        agents = raw["agents"] = {name: dict(entry) if isinstance(entry, dict) else entry
                                  for name, entry in agents.items()}  # fmt: skip
        for name, entry in agents.items():
            if not isinstance(entry, dict):
                continue
            cfg = entry.get("config")
            if isinstance(cfg, str):
                full = _relative(base, cfg)
                entry["config"] = str(full)
                try:
                    load_cycle_config(full)
                except ConfigError as exc:
                    problems.append(f"  agents.{name}.config: {str(exc).strip()}")
            guard = entry.get("online_guard")
            if isinstance(guard, str):
                try:
                    entry["online_guard"] = load_guard_config(_relative(base, guard)).model_dump()
                except ConfigError as exc:
                    entry.pop("online_guard")
                    problems.append(f"  agents.{name}.online_guard: {str(exc).strip()}")
    try:
        config = SchedulerConfig.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc) + problems
    if problems:
        raise ConfigError(f"{where} is not a valid scheduler config:\n" + "\n".join(problems)) from None
    return config
