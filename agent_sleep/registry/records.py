"""Typed, detached views of registry rows (adapter versions, stacks, deployments), and why a version is rejected."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from agent_sleep.errors import InvalidInputError
from agent_sleep.registry.refs import parse_adapter_ref
from agent_sleep.store.records import Record

AdapterStatus = Literal["candidate", "approved", "live", "retired", "rejected", "rolled_back"]
ADAPTER_STATUSES: tuple[str, ...] = ("candidate", "approved", "live", "retired", "rejected", "rolled_back")

RejectionKind = Literal["policy", "compatibility", "integrity", "manual"]


class Rejection(BaseModel):
    """Why a version was rejected, precisely enough to tell whether a later deploy should look again.

    ``policy``: failed a limit of the deploy (``delta_norm`` under ``policy["max_delta_norm"]``); a
    deploy under a looser limit validates it again. ``compatibility``: does not fit the base model it
    was checked on (``base_model``, ``targets``); another base model looks again. ``integrity``: the
    artifact itself is broken (tampered, unreadable, NaN, does not reload) and ``manual``: rejected by
    hand, or before rejections were recorded; both stand until ``approve``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")  # stored detail may carry newer keys

    check: str
    kind: RejectionKind
    base_model_hash: str | None = None
    policy: dict[str, float] = {}
    value: float | None = None

    def applies(self, *, base_model_hash: str, max_delta_norm: float) -> bool:
        """Whether validating again on this base model under this limit would fail the same way."""
        if self.kind in ("integrity", "manual"):
            return True
        if self.base_model_hash != base_model_hash:
            return False
        if self.kind == "policy":
            limit = self.policy.get("max_delta_norm")
            return limit is None or max_delta_norm <= limit
        return True


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
    status_detail: dict[str, Any] | None = None
    sources: dict[str, Any]
    eval_summary: dict[str, Any]
    created_at: datetime
    aliases: tuple[str, ...] = ()

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        return v.get("modules", []) if isinstance(v, dict) else v

    @property
    def rejection(self) -> Rejection | None:
        """Why this version is rejected (None unless it is); without a recorded detail it counts as manual."""
        if self.status != "rejected":
            return None
        detail = self.status_detail or {}
        if "check" in detail and "kind" in detail:
            return Rejection.model_validate(detail)
        return Rejection(check="unknown", kind="manual")


class StatusChangeRecord(Record):
    """One recorded status change of an adapter version."""

    adapter: str
    from_status: str
    to_status: str
    actor: str
    reason: str
    detail: dict[str, Any] | None
    created_at: datetime


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
    detail: dict[str, Any] | None = None  # the numbers behind it (e.g. the online guard's check), migration 0005
    created_at: datetime


class RollbackPlan(BaseModel):
    """What a rollback would make live, worked out before anything is written (so it can be validated)."""

    model_config = ConfigDict(frozen=True)

    agent: str
    stack: StackRecord | None  # None: the base model (rolling back the agent's first deployment)
    target_seq: int  # the earlier deployment whose stack returns (0: the base model, before the first one)
    previous_id: str | None  # where the next rollback goes from there (an undo stack, not a toggle)
    expected_seq: int  # the live deployment this plan was made against

    @property
    def target(self) -> str | list[Any]:
        """What :meth:`AdapterRegistry.deploy` is given: the stack's name, or no items for the base model."""
        return self.stack.name if self.stack is not None else []

    @property
    def items(self) -> tuple[StackItem, ...]:
        return self.stack.items if self.stack is not None else ()


def refuse_rejected(records: Sequence[AdapterVersionRecord]) -> None:
    """Raise :class:`InvalidInputError` naming the first rejected version: a rejected version is never served."""
    for rec in records:
        if rec.status == "rejected":
            raise InvalidInputError(f"{rec.name} is rejected ({rec.status_reason}); a rejected version is never served")
