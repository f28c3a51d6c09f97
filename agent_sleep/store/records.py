"""Typed values that go into and come out of the experience store.

Inputs (``EventIn``, ``FeedbackIn``) validate what callers hand in: kinds, UTF-8
text and the payload size cap. Outputs (``EpisodeRecord`` …) are detached,
frozen copies of rows, safe to pass between threads after the session closed.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from agent_sleep.errors import EncodingError, InvalidEventError, PayloadTooLargeError

# run_input / run_output: a graph's input and final state when it is not a list of messages;
# interrupt: what a graph asked a human; resume: where a later run continued the episode (and the answer).
EventKind = Literal[
    "user_message", "assistant_message", "system_message", "tool_call", "tool_result", "error", "custom",
    "run_input", "run_output", "interrupt", "resume",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
EpisodeStatus = Literal["running", "completed", "error", "interrupted"]
EPISODE_STATUSES: tuple[str, ...] = get_args(EpisodeStatus)
FeedbackSource = Literal["human", "automatic", "evaluator"]


def as_utc(value: datetime | float | str | None) -> datetime | None:
    """A timezone-aware UTC datetime from a datetime, epoch seconds or ISO string."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:  # SQLite hands back naive datetimes; we only ever store UTC
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def normalize_episode_id(value: Any) -> str:
    """The stored form of an episode id: a UUID in any spelling (dashed, braced, ``urn:uuid:``, any case) or
    a ``UUID`` object becomes 32 lowercase hex digits, as capture writes them; other ids are kept as given."""
    if isinstance(value, uuid.UUID):
        return value.hex
    text = str(value).strip()
    if _HEX32.fullmatch(text):
        return text.lower()
    if len(text) in (36, 38, 45):  # dashed, {braced}, urn:uuid:dashed
        try:
            return uuid.UUID(text).hex
        except ValueError:
            pass
    return text


def check_text(value: Any, field: str) -> str:
    """``value`` as a str that encodes to UTF-8, or an EncodingError naming ``field``."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncodingError(f"{field} is not valid UTF-8 (byte {exc.start}: {exc.reason})") from exc
    elif not isinstance(value, str):
        raise InvalidEventError(f"{field} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError(f"{field} is not valid UTF-8 text (position {exc.start}: {exc.reason})") from exc
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; refuse it on every backend alike
        raise EncodingError(f"{field} contains a NUL character (position {value.index(chr(0))})")
    return value


def payload_size(content: str, payload: dict[str, Any]) -> int:
    return len(content.encode("utf-8")) + (len(json.dumps(payload, ensure_ascii=False, default=str)) if payload else 0)


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], raw: dict[str, Any], where: str) -> M:
    """``model(**raw)``, with pydantic's errors turned into one clear agent-sleep error."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, EncodingError):
                raise EncodingError(f"{where}: {cause}") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise InvalidEventError(f"malformed {where}: {problems}") from None


class EventIn(BaseModel):
    """One event handed to the store. ``seq`` is assigned by the store when omitted."""

    model_config = ConfigDict(extra="forbid")

    kind: EventKind
    content: str = ""
    name: str | None = Field(default=None, max_length=256)
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    id: str | None = Field(default=None, max_length=64)
    seq: int | None = Field(default=None, ge=0)

    @field_validator("content", mode="before")
    @classmethod
    def _utf8(cls, v: Any) -> str:
        return check_text(v, "content") if v is not None else ""

    @classmethod
    def parse(cls, raw: Any, *, max_bytes: int, where: str = "event") -> EventIn:
        """Validate ``raw`` (a dict or EventIn) and enforce the size cap."""
        if isinstance(raw, EventIn):
            event = raw
        elif isinstance(raw, dict):
            event = validate(cls, raw, where)
        else:
            raise InvalidEventError(f"malformed {where}: expected a mapping, got {type(raw).__name__}")
        try:
            size = payload_size(event.content, event.payload)
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(f"malformed {where}: payload is not JSON-serialisable ({exc})") from exc
        if size > max_bytes:
            raise PayloadTooLargeError(
                f"{where} is {size:,} bytes, above the cap of {max_bytes:,} "
                "(AGENT_SLEEP_MAX_PAYLOAD_BYTES / Settings.max_payload_bytes)"
            )
        return event


class FeedbackIn(BaseModel):
    """Feedback on an episode. ``correction``: the right answer when the agent answered wrong (a
    consolidation run trains on the conversation with it in place of the wrong answer).
    ``instruction``: how the agent should behave from now on ("always ask for the order number
    first"), for every later conversation, not only this one (a consolidation run makes it part of
    the description of the agent's dialog skill). Either may be the only thing given, but not blank."""

    model_config = ConfigDict(extra="forbid")

    score: float | None = None
    label: str | None = Field(default=None, max_length=64)
    comment: str | None = None
    source: FeedbackSource = "human"
    correction: str | None = None
    instruction: str | None = None

    @field_validator("comment", "label", "correction", "instruction", mode="before")
    @classmethod
    def _utf8(cls, v: Any) -> Any:
        return check_text(v, "feedback text") if v is not None else None

    @field_validator("correction", "instruction", mode="after")
    @classmethod
    def _not_blank(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not v.strip():
            raise ValueError(f"a{'n' if info.field_name == 'instruction' else ''} {info.field_name} must not be blank")
        return v

    @property
    def empty(self) -> bool:
        return (self.score is None and self.label is None and self.comment is None and self.correction is None
                and self.instruction is None)


FEEDBACK_NEEDS = "feedback needs at least one of score, label, comment, correction or instruction"


class Record(BaseModel):
    """Base of the read-side records: frozen, built from ORM rows, datetimes in UTC."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, v: Any) -> Any:
        return as_utc(v) if isinstance(v, datetime) else v

class EventRecord(Record):
    id: str
    episode_id: str
    seq: int
    kind: str
    name: str | None
    content: str
    payload: dict[str, Any]
    created_at: datetime

class FeedbackRecord(Record):
    id: str
    episode_id: str
    score: float | None
    label: str | None
    comment: str | None
    source: str
    created_at: datetime
    correction: str | None = None
    instruction: str | None = None

class EpisodeRecord(Record):
    id: str
    agent: str
    thread_id: str | None
    started_at: datetime
    ended_at: datetime | None
    status: str
    outcome: str | None
    error: str | None
    meta: dict[str, Any] = Field(default_factory=dict)
    consolidated_at: datetime | None
    consolidation_run: str | None
    n_events: int = 0
    mean_score: float | None = None
    n_feedback: int = 0

class DocumentRecord(Record):
    id: str
    agent: str | None
    source: str
    title: str | None
    content: str
    content_hash: str
    version: int
    created_at: datetime
    meta: dict[str, Any] = Field(default_factory=dict)
    consolidated_at: datetime | None
    consolidation_run: str | None = None

class EpisodeQuery(BaseModel):
    """What the consolidation job asks for: a window, an agent, outcomes, feedback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str | None = None
    thread_id: str | None = None
    episode_ids: tuple[str, ...] | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: EpisodeStatus | None = None
    outcome: str | None = None
    feedback_label: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    has_feedback: bool | None = None
    unconsolidated: bool = False
    limit: int | None = Field(default=None, gt=0)
    newest_first: bool = False

    @field_validator("episode_ids", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        if v is None:
            return None
        return tuple(normalize_episode_id(x) for x in ([v] if isinstance(v, (str, uuid.UUID)) else v))
