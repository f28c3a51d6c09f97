"""SQLAlchemy 2.0 tables of the experience store.

Ids are client-generated strings (UUID4 hex) so that capture can write in the
background without a round trip for every new episode or event. The schema is
owned by the Alembic migrations in ``store/migrations``; this module must match
the newest of them (a test checks it).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Agent(Base):
    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)


class Episode(Base):
    """One run of an agent (one graph invocation), inside a conversation thread."""

    __tablename__ = "episodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"), index=True)
    thread_id: Mapped[str | None] = mapped_column(String(256), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    ended_at: Mapped[datetime | None]
    # running | completed | error | interrupted (String(16): new values need no migration)
    status: Mapped[str] = mapped_column(String(16), default="running")
    # free-form label set by the agent or an evaluator, e.g. "resolved", "escalated"
    outcome: Mapped[str | None] = mapped_column(String(64), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    consolidated_at: Mapped[datetime | None] = mapped_column(index=True)
    consolidation_run: Mapped[str | None] = mapped_column(String(64))

    events: Mapped[list[Event]] = relationship(back_populates="episode", order_by="Event.seq")
    feedback: Mapped[list[Feedback]] = relationship(back_populates="episode", order_by="Feedback.created_at")


class Event(Base):
    """An ordered step of an episode: a message, a tool call or a tool result."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("episode_id", "seq", name="uq_events_episode_seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    # user_message | assistant_message | system_message | tool_call | tool_result | error | custom |
    # run_input | run_output | interrupt | resume  (records.EventKind)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    content: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    episode: Mapped[Episode] = relationship(back_populates="events")


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    # human | automatic | evaluator
    source: Mapped[str] = mapped_column(String(16), default="human")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the right answer when the agent was wrong (migration 0004): a consolidation run trains on it
    correction: Mapped[str | None] = mapped_column(Text)
    # how the agent should behave from now on (migration 0006): the description of its dialog skill
    instruction: Mapped[str | None] = mapped_column(Text)

    episode: Mapped[Episode] = relationship(back_populates="feedback")


class Document(Base):
    """A knowledge source. A new content hash under the same source is a new version."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("source", "version", name="uq_documents_source_version"),
        Index("ix_documents_hash", "content_hash"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str | None] = mapped_column(ForeignKey("agents.name"), index=True)
    source: Mapped[str] = mapped_column(String(512))
    title: Mapped[str | None] = mapped_column(String(512))
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    consolidated_at: Mapped[datetime | None]
    consolidation_run: Mapped[str | None] = mapped_column(String(64))  # migration 0004


class Skill(Base):
    """A named capability an agent can gain; adapters are versions of a skill."""

    __tablename__ = "skills"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(32), default="custom")  # t2l | d2l | sft | custom
    agent: Mapped[str | None] = mapped_column(ForeignKey("agents.name"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)


# -- adapter registry (migration 0002) ------------------------------------------------------


class AdapterVersion(Base):
    """One immutable adapter version ``skill@vN``: a PEFT folder on disk plus its lineage."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("skill", "version", name="uq_adapter_versions_skill_version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    skill: Mapped[str] = mapped_column(ForeignKey("skills.name"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(160), unique=True)
    path: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    base_model_id: Mapped[str] = mapped_column(String(512))
    base_model_hash: Mapped[str] = mapped_column(String(64), index=True)
    generator: Mapped[str] = mapped_column(String(32))
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"modules": [...]}
    # candidate | approved | live | retired | rejected | rolled_back
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    # structured "why" of the status (migration 0003): for rejected, the failing check and the policy
    status_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eval_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterStatusChange(Base):
    """One status change of an adapter version (``candidate`` → ``rejected`` …), by whom and why. Never edited."""

    __tablename__ = "adapter_status_changes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    version_id: Mapped[str] = mapped_column(ForeignKey("adapter_versions.id"), index=True)
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdapterAlias(Base):
    """A movable name (``live``, ``previous``, ``candidate``) for one version of a skill."""

    __tablename__ = "adapter_aliases"

    skill: Mapped[str] = mapped_column(ForeignKey("skills.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("adapter_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Stack(Base):
    """An immutable, versioned, ordered list of (adapter version, weight) for an agent."""

    __tablename__ = "stacks"
    __table_args__ = (
        UniqueConstraint("agent", "version", name="uq_stacks_agent_version"),
        Index("ix_stacks_agent_hash", "agent", "content_hash"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    items: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"items": [{"adapter", "weight"}]}
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """"Stack S became live for agent A at time T, by R, because …". Never edited."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("agent", "seq", name="uq_deployments_agent_seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    stack_id: Mapped[str] = mapped_column(ForeignKey("stacks.id"))
    kind: Mapped[str] = mapped_column(String(16))  # deploy | rollback | remove_skill
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[str | None] = mapped_column(String(64))
    previous_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # migration 0005
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- consolidation runs (migration 0004) ----------------------------------------------------


class ConsolidationRun(Base):
    """One sleep cycle of an agent: select → generate → evaluate → deploy, and how it ended."""

    __tablename__ = "consolidation_runs"
    __table_args__ = (Index("ix_consolidation_runs_agent_started", "agent", "started_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"))
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)  # running | finished
    # promoted | rejected_by_gate | no_signal | failed | skipped_overlap (None while running)
    outcome: Mapped[str | None] = mapped_column(String(32))
    stage: Mapped[str | None] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    folder: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deployed_stack: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]


class RunStage(Base):
    """One stage of a run: its status, attempt count and the result the next stage (or a rerun) reads."""

    __tablename__ = "run_stages"

    run_id: Mapped[str] = mapped_column(ForeignKey("consolidation_runs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)  # select | generate | evaluate | deploy
    status: Mapped[str] = mapped_column(String(16))  # started | done | failed
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]


class SelectionDecision(Base):
    """Why one episode or document was kept or dropped in a run, by which selector (``runs explain``)."""

    __tablename__ = "selection_decisions"
    __table_args__ = (Index("ix_selection_decisions_run_item", "run_id", "item_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("consolidation_runs.id", ondelete="CASCADE"))
    item_kind: Mapped[str] = mapped_column(String(16))  # episode | document
    item_id: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(String(64))
    kept: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    skill: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str | None] = mapped_column(String(16))  # train | probe
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- scheduling (migration 0005) --------------------------------------------------------------


class AgentLease(Base):
    """Who may run an agent's cycle now: the holder of an unexpired lease (``token`` fences stale holders)."""

    __tablename__ = "agent_leases"

    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    token: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[str | None] = mapped_column(String(64))
    acquired_at: Mapped[datetime | None]
    renewed_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]


class Schedule(Base):
    """When an agent sleeps: a cron or interval schedule, or a trigger on new episodes or documents."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # cron | interval | new_episodes | documents
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config_path: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_fired_at: Mapped[datetime | None]


class SleepRequest(Base):
    """A request to run an agent's cycle, from a schedule, a trigger or a person; one run serves many."""

    __tablename__ = "sleep_requests"
    __table_args__ = (Index("ix_sleep_requests_agent_status", "agent", "status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"))
    source: Mapped[str] = mapped_column(String(64))  # schedule:<id> | trigger:<kind> | manual
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | running | done | coalesced | failed
    run_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(128))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)
