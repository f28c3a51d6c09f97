"""JSONL export and import of the experience store.

One self-contained object per line: ``{"kind": "episode", "format": 1, …}``
carries the episode with its events and feedback, ``{"kind": "document", …}``
one document version. Keys that a newer exporter adds are ignored; a
``format`` newer than this code reads is refused.

Import is all or nothing: :func:`read_import` checks every line before anything
is written (it needs no database), :func:`write_import` writes the checked
batch in one transaction, and :func:`import_jsonl` does both. Each refusal
starts with ``FILE:LINE:`` and names the field: a line that is not UTF-8
(EncodingError), not JSON (``NaN`` and ``Infinity`` are not JSON), not an
object, of an unknown kind or a newer format; a value of the wrong type, out
of range (timestamps, ``seq``, ``version``), longer than its column or above
the payload cap; a document whose ``content_hash`` is not the sha256 of its
content; an id that already appeared earlier in the file; two events with
the same ``seq`` in one episode. Rows already in the database (same id, or the
same episode and seq, source and version) are left as they are and not
counted: the report counts new rows, so a second import of the same file
reports zeros. Only a regular file is read; an empty file imports nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from sqlalchemy import Connection, Table, func, select

from agent_sleep.errors import EncodingError, InvalidEventError
from agent_sleep.fsutil import open_regular_file
from agent_sleep.store.models import Document, Episode, Event, Feedback
from agent_sleep.store.ops import Op, apply_ops, insert_ignore
from agent_sleep.store.records import (
    FEEDBACK_NEEDS,
    EpisodeQuery,
    EpisodeStatus,
    EventIn,
    FeedbackIn,
    as_utc,
    check_text,
)
from agent_sleep.store.store import ExperienceStore

FORMAT_VERSION = 1
_INT_MAX = 2**31 - 1  # seq and version are INTEGER columns


@dataclass(frozen=True)
class ImportReport:
    """New rows an import wrote; ``skipped`` counts records of the file that were already present."""

    episodes: int
    events: int
    feedback: int
    documents: int
    skipped: int = 0


@dataclass(frozen=True)
class ImportBatch:
    """A checked import file: write ops and document rows, ready for :func:`write_import`."""

    path: Path
    ops: list[Op]
    documents: list[dict[str, Any]]


def iter_export(store: ExperienceStore, query: EpisodeQuery | None = None,
                include_documents: bool = True) -> Iterator[dict[str, Any]]:
    for ep in store.episodes(query or EpisodeQuery()):
        yield {
            "kind": "episode",
            "format": FORMAT_VERSION,
            "episode": ep.model_dump(mode="json", exclude={"n_events", "mean_score", "n_feedback"}),
            "events": [e.model_dump(mode="json", exclude={"episode_id"}) for e in store.events(ep.id)],
            "feedback": [f.model_dump(mode="json", exclude={"episode_id"}) for f in store.feedback(ep.id)],
        }
    if include_documents:
        agent = query.agent if query else None
        for doc in store.documents(agent=agent, latest_only=False):
            yield {"kind": "document", "format": FORMAT_VERSION, "document": doc.model_dump(mode="json")}


def export_jsonl(store: ExperienceStore, out: IO[str], query: EpisodeQuery | None = None,
                 include_documents: bool = True) -> int:
    """Write the selected episodes (and documents) to ``out``; returns lines written."""
    n = 0
    for obj in iter_export(store, query, include_documents):
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        n += 1
    return n


# ---------------------------------------------------------------- what a line may hold


def _utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
        as_utc(utc.timestamp())  # the write ops carry epoch seconds
    except (OverflowError, ValueError, OSError):  # e.g. 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise ValueError("timestamp out of range") from None
    return utc


class _Checked(BaseModel):
    """Import rows: null means "not given", every text is storable UTF-8, every time converts to UTC."""

    model_config = ConfigDict(extra="ignore")  # keys a newer exporter adds

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            return check_text(value, info.field_name or "text")
        if isinstance(value, datetime):
            return _utc(value)
        if isinstance(value, dict):
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise EncodingError(f"{info.field_name} holds text that is not valid UTF-8 ({exc.reason})") from None
        return value


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


_Id = Annotated[str, Field(min_length=1, max_length=64)]
_Agent = Annotated[str, Field(min_length=1, max_length=128)]


class _Episode(_Checked):
    id: _Id
    agent: _Agent
    thread_id: str | None = Field(default=None, max_length=256)
    started_at: datetime
    ended_at: datetime | None = None
    status: EpisodeStatus = "running"
    outcome: str | None = Field(default=None, max_length=64)
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    check_blank = field_validator("id", "agent")(_not_blank)


class _Event(_Checked, EventIn):
    model_config = ConfigDict(extra="ignore")
    seq: int = Field(ge=0, le=_INT_MAX, strict=True)  # type: ignore[assignment]  # required: it orders the episode


class _Feedback(_Checked, FeedbackIn):
    model_config = ConfigDict(extra="ignore")
    id: _Id | None = None
    score: float | None = Field(default=None, allow_inf_nan=False)
    created_at: datetime | None = None

    @model_validator(mode="after")
    def _says_something(self) -> _Feedback:
        if self.empty:
            raise ValueError(FEEDBACK_NEEDS)
        return self


class _EpisodeLine(_Checked):
    episode: _Episode
    events: list[_Event] = Field(default_factory=list)
    feedback: list[_Feedback] = Field(default_factory=list)


class _Document(_Checked):
    id: _Id
    agent: _Agent | None = None
    source: str = Field(min_length=1, max_length=512)
    title: str | None = Field(default=None, max_length=512)
    content: str
    content_hash: str
    version: int = Field(ge=1, le=_INT_MAX, strict=True)
    created_at: datetime
    meta: dict[str, Any] = Field(default_factory=dict)
    consolidated_at: datetime | None = None
    consolidation_run: str | None = Field(default=None, max_length=64)

    check_blank = field_validator("id", "agent")(_not_blank)

    @model_validator(mode="after")
    def _hash_matches(self) -> _Document:
        if hashlib.sha256(self.content.encode("utf-8")).hexdigest() != self.content_hash:
            raise ValueError("content_hash is not the sha256 of the content")
        return self


class _DocumentLine(_Checked):
    document: _Document


M = TypeVar("M", bound=BaseModel)


def _problem(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "value"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] not in ("missing", "value_error") and isinstance(err.get("input"), (str, int, float)):
        got = repr(err["input"])
        msg += f" (got {got if len(got) <= 60 else got[:56] + ' ...'})"
    return f"{loc}: {msg}"


def _check(model: type[M], obj: dict[str, Any], where: str) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors()
        for err in errors:
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, EncodingError):
                raise EncodingError(f"{where}: {'.'.join(map(str, err['loc']))}: {cause}") from None
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InvalidEventError(f"{where}: " + "; ".join(_problem(e) for e in errors[:3]) + more) from None


# ---------------------------------------------------------------- reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _parse_line(raw: bytes, where: str, *, first: bool) -> dict[str, Any] | None:
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")  # a byte-order mark may open the file
    except UnicodeDecodeError as exc:
        raise EncodingError(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidEventError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise InvalidEventError(f"{where}: not valid JSON here (nested too deeply)") from None
    except ValueError as exc:  # NaN / Infinity, integers of thousands of digits
        raise InvalidEventError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidEventError(f"{where}: expected a JSON object, got {_JSON_TYPES.get(type(obj), 'null')}")
    fmt = obj.get("format", FORMAT_VERSION)
    if type(fmt) is not int or fmt < 1:
        raise InvalidEventError(f"{where}: format must be a positive integer, got {fmt!r}")
    if fmt > FORMAT_VERSION:
        raise InvalidEventError(f"{where}: format {fmt} is newer than this agent-sleep reads ({FORMAT_VERSION})")
    return obj


def _derived_id(text: str) -> str:
    """``text`` as a row id; one too long for the column becomes its sha256 (still the same on every import)."""
    return text if len(text) <= 64 else hashlib.sha256(text.encode("utf-8")).hexdigest()


class _FirstSeen:
    """Ids (and other keys) claimed so far, with the line that claimed each."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, Any], tuple[int, str]] = {}

    def claim(self, what: str, key: Any, where: str, lineno: int, slot: str = "") -> None:
        first = self._first.setdefault((what, key), (lineno, slot))
        if first != (lineno, slot):
            at = f"in {first[1]} of this line" if first[0] == lineno else f"on line {first[0]}"
            raise InvalidEventError(f"{where}: {what} {key!r}{f' ({slot})' if slot else ''} already appears {at}")


def _episode_ops(line: _EpisodeLine, where: str, lineno: int, max_bytes: int, seen: _FirstSeen) -> list[Op]:
    ep = line.episode
    seen.claim("episode", ep.id, where, lineno)
    started = ep.started_at.timestamp()
    ops: list[Op] = [{"op": "episode_start", "id": ep.id, "agent": ep.agent, "thread_id": ep.thread_id,
                      "meta": ep.meta, "ts": started}]  # fmt: skip
    by_seq: dict[int, int] = {}
    for i, ev in enumerate(line.events):
        EventIn.parse(ev, max_bytes=max_bytes, where=f"{where}: events.{i}")  # the payload cap
        j = by_seq.setdefault(ev.seq, i)
        if j != i:
            raise InvalidEventError(f"{where}: episode {ep.id!r} has two events with seq {ev.seq} "
                                    f"(events.{j} and events.{i})")  # fmt: skip
        event_id = ev.id or _derived_id(f"{ep.id}-{ev.seq}")
        seen.claim("event id", event_id, where, lineno, f"events.{i}")
        ops.append({"op": "event", "id": event_id, "episode_id": ep.id, "seq": ev.seq, "kind": ev.kind,
                    "name": ev.name, "content": ev.content, "payload": ev.payload,
                    "ts": ev.created_at.timestamp() if ev.created_at else started})  # fmt: skip
    if ep.status in ("completed", "error", "interrupted"):
        ops.append({"op": "episode_end", "id": ep.id, "status": ep.status, "outcome": ep.outcome, "error": ep.error,
                    "ts": ep.ended_at.timestamp() if ep.ended_at else started})  # fmt: skip
    for i, fb in enumerate(line.feedback):
        feedback_id = fb.id or _derived_id(f"{ep.id}-fb{i}")
        seen.claim("feedback id", feedback_id, where, lineno, f"feedback.{i}")
        ops.append({"op": "feedback", "id": feedback_id, "episode_id": ep.id, "score": fb.score, "label": fb.label,
                    "comment": fb.comment, "correction": fb.correction, "instruction": fb.instruction,
                    "source": fb.source,
                    "ts": fb.created_at.timestamp() if fb.created_at else started})  # fmt: skip
    return ops


def _document_row(line: _DocumentLine, where: str, lineno: int, seen: _FirstSeen) -> dict[str, Any]:
    doc = line.document
    seen.claim("document", doc.id, where, lineno)
    seen.claim("document version", (doc.source, doc.version), where, lineno)
    return {"id": doc.id, "agent": doc.agent, "source": doc.source, "title": doc.title, "content": doc.content,
            "content_hash": doc.content_hash, "version": doc.version, "created_at": doc.created_at,
            "metadata": doc.meta, "consolidated_at": doc.consolidated_at,
            "consolidation_run": doc.consolidation_run}  # fmt: skip


def read_import(path: str | Path, *, max_payload_bytes: int) -> ImportBatch:
    """Read and check every line of the JSONL file ``path``; raises on the first bad line, writes nothing."""
    path = Path(path)
    ops: list[Op] = []
    docs: list[dict[str, Any]] = []
    seen = _FirstSeen()
    with open_regular_file(path, what="import file") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            obj = _parse_line(raw, where, first=lineno == 1)
            if obj is None:
                continue
            kind = obj.get("kind")
            if kind == "episode":
                ops += _episode_ops(_check(_EpisodeLine, obj, where), where, lineno, max_payload_bytes, seen)
            elif kind == "document":
                docs.append(_document_row(_check(_DocumentLine, obj, where), where, lineno, seen))
            else:
                raise InvalidEventError(f"{where}: unknown kind {kind!r} (expected episode or document)")
    for d in docs:
        if d["agent"]:
            ops.append({"op": "agent", "name": d["agent"], "ts": d["created_at"].timestamp()})
    return ImportBatch(path=path, ops=ops, documents=docs)


# ---------------------------------------------------------------- writing


def _present(conn: Connection, table: Table, ids: Sequence[str]) -> int:
    n = 0
    for start in range(0, len(ids), 500):  # well below every backend's limit on bound parameters
        chunk = ids[start : start + 500]
        n += conn.execute(select(func.count()).select_from(table).where(table.c.id.in_(chunk))).scalar_one()
    return n


def write_import(store: ExperienceStore, batch: ImportBatch) -> ImportReport:
    """Write a checked batch in one transaction; rows already present are skipped and not counted."""
    tables: dict[str, Table] = {"episode_start": Episode.__table__, "event": Event.__table__,  # type: ignore[dict-item]
                                "feedback": Feedback.__table__, "document": Document.__table__}  # fmt: skip
    ids = {op: [o["id"] for o in batch.ops if o["op"] == op] for op in tables}
    ids["document"] = [d["id"] for d in batch.documents]
    with store.engine.begin() as conn:
        before = {op: _present(conn, tables[op], ids[op]) for op in tables}
        apply_ops(conn, batch.ops)
        insert_ignore(conn, tables["document"], batch.documents)
        new = {op: _present(conn, tables[op], ids[op]) - before[op] for op in tables}
    return ImportReport(episodes=new["episode_start"], events=new["event"], feedback=new["feedback"],
                        documents=new["document"], skipped=sum(map(len, ids.values())) - sum(new.values()))  # fmt: skip


def import_jsonl(store: ExperienceStore, path: str | Path) -> ImportReport:
    """Check every line of ``path``, then write them all in one transaction (:func:`read_import`, :func:`write_import`)."""
    return write_import(store, read_import(path, max_payload_bytes=store.settings.max_payload_bytes))
