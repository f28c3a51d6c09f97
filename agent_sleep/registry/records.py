"""Typed, detached views of registry rows (adapter versions, stacks, deployments)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from agent_sleep.registry.refs import parse_adapter_ref
from agent_sleep.store.records import Record

AdapterStatus = Literal["candidate", "approved", "live", "retired", "rejected", "rolled_back"]
ADAPTER_STATUSES: tuple[str, ...] = ("candidate", "approved", "live", "retired", "rejected", "rolled_back")


class AdapterVersionRecord(Record):
    id: str
    skill: str
    version: int
    name: str
    path: str
    weights_sha256: str
    base_model_id: str
    base_model_hash: str
    generator: str
    rank: int
    target_modules: list[str]
    status: str
    status_reason: str | None
    sources: dict[str, Any]
    eval_summary: dict[str, Any]
    created_at: datetime
    aliases: tuple[str, ...] = ()

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        return v.get("modules", []) if isinstance(v, dict) else v


class StackItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    adapter: str  # "skill@vN"
    weight: float = 1.0


class StackRecord(Record):
    id: str
    agent: str
    version: int
    name: str  # "agent:stack@vN", see registry.refs.StackRef
    items: tuple[StackItem, ...]
    content_hash: str
    created_at: datetime

    @field_validator("items", mode="before")
    @classmethod
    def _items(cls, v: Any) -> Any:
        return v.get("items", []) if isinstance(v, dict) else v

    @property
    def skills(self) -> list[str]:
        return [parse_adapter_ref(i.adapter).skill for i in self.items]


class DeploymentRecord(Record):
    id: str
    agent: str
    seq: int
    stack: StackRecord
    kind: str
    actor: str
    reason: str
    run_id: str | None
    previous_id: str | None
    created_at: datetime
