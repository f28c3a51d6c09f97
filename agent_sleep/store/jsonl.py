"""JSONL export and import of the experience store.

One self-contained object per line: ``{"kind": "episode", …}`` carries the
episode with its events and feedback, ``{"kind": "document", …}`` one document
version. Import validates the whole file before writing anything and then writes
it in one transaction; rows that already exist (same id) are skipped, so
importing the same file twice is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent_sleep.errors import EncodingError, InvalidEventError
from agent_sleep.store.models import Document
from agent_sleep.store.ops import Op, insert_ignore, apply_ops
from agent_sleep.store.records import EVENT_KINDS, EpisodeQuery, EventIn, as_utc, check_text
from agent_sleep.store.store import ExperienceStore

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImportReport:
    episodes: int
    events: int
    feedback: int
    documents: int


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


def _episode_ops(obj: dict[str, Any], where: str, max_bytes: int) -> list[Op]:
    ep = obj.get("episode")
    if not isinstance(ep, dict) or not ep.get("id") or not ep.get("agent") or not ep.get("started_at"):
        raise InvalidEventError(f"{where}: episode needs id, agent and started_at")
    ops: list[Op] = [{"op": "episode_start", "id": ep["id"], "agent": ep["agent"], "thread_id": ep.get("thread_id"),
                      "meta": ep.get("meta") or {}, "ts": as_utc(ep["started_at"]).timestamp()}]  # type: ignore[union-attr]
    for i, raw in enumerate(obj.get("events") or []):
        if not isinstance(raw, dict) or "seq" not in raw or raw.get("kind") not in EVENT_KINDS:
            raise InvalidEventError(f"{where}: event #{i} needs seq and a kind in {EVENT_KINDS}")
        ev = EventIn.parse({k: raw.get(k) for k in ("kind", "content", "name", "payload", "created_at", "id", "seq")
                            if raw.get(k) is not None}, max_bytes=max_bytes, where=f"{where} event #{i}")
        ops.append({"op": "event", "id": ev.id or f"{ep['id']}-{ev.seq}", "episode_id": ep["id"], "seq": ev.seq,
                    "kind": ev.kind, "name": ev.name, "content": ev.content, "payload": ev.payload,
                    "ts": (as_utc(ev.created_at) or as_utc(ep["started_at"])).timestamp()})  # type: ignore[union-attr]
    if ep.get("status") in ("completed", "error", "interrupted"):
        ops.append({"op": "episode_end", "id": ep["id"], "status": ep["status"], "outcome": ep.get("outcome"),
                    "error": ep.get("error"), "ts": as_utc(ep.get("ended_at") or ep["started_at"]).timestamp()})  # type: ignore[union-attr]
    for i, fb in enumerate(obj.get("feedback") or []):
        if not isinstance(fb, dict) or fb.get("source", "human") not in ("human", "automatic", "evaluator"):
            raise InvalidEventError(f"{where}: feedback #{i} is malformed")
        ops.append({"op": "feedback", "id": fb.get("id") or f"{ep['id']}-fb{i}", "episode_id": ep["id"],
                    "score": fb.get("score"), "label": fb.get("label"), "comment": fb.get("comment"),
                    "source": fb.get("source", "human"), "ts": as_utc(fb.get("created_at") or ep["started_at"]).timestamp()})  # type: ignore[union-attr]
    return ops


def _document_row(obj: dict[str, Any], where: str) -> dict[str, Any]:
    doc = obj.get("document")
    need = ("id", "source", "content", "content_hash", "version", "created_at")
    if not isinstance(doc, dict) or any(doc.get(k) is None for k in need):
        raise InvalidEventError(f"{where}: document needs {', '.join(need)}")
    return {"id": doc["id"], "agent": doc.get("agent"), "source": doc["source"], "title": doc.get("title"),
            "content": check_text(doc["content"], f"{where} document content"), "content_hash": doc["content_hash"],
            "version": int(doc["version"]), "created_at": as_utc(doc["created_at"]), "metadata": doc.get("meta") or {},
            "consolidated_at": as_utc(doc.get("consolidated_at"))}


def import_jsonl(store: ExperienceStore, path: str | Path) -> ImportReport:
    """Validate every line of ``path``, then write them all in one transaction."""
    path = Path(path)
    ops: list[Op] = []
    docs: list[dict[str, Any]] = []
    counts = {"episodes": 0, "events": 0, "feedback": 0}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise EncodingError(f"{where}: not valid UTF-8 (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidEventError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise InvalidEventError(f"{where}: expected a JSON object")
            if obj.get("format", FORMAT_VERSION) > FORMAT_VERSION:
                raise InvalidEventError(f"{where}: format {obj['format']} is newer than this agent-sleep reads")
            try:
                if obj.get("kind") == "episode":
                    ep_ops = _episode_ops(obj, where, store.settings.max_payload_bytes)
                    ops += ep_ops
                    counts["episodes"] += 1
                    counts["events"] += sum(o["op"] == "event" for o in ep_ops)
                    counts["feedback"] += sum(o["op"] == "feedback" for o in ep_ops)
                elif obj.get("kind") == "document":
                    docs.append(_document_row(obj, where))
                else:
                    raise InvalidEventError(f"{where}: unknown kind {obj.get('kind')!r} (expected episode or document)")
            except (TypeError, ValueError) as exc:
                if isinstance(exc, InvalidEventError):
                    raise
                raise InvalidEventError(f"{where}: {exc}") from None
    for d in docs:
        if d["agent"]:
            ops.append({"op": "agent", "name": d["agent"], "ts": d["created_at"].timestamp()})
    with store.engine.begin() as conn:
        apply_ops(conn, ops)
        insert_ignore(conn, Document.__table__, docs)  # type: ignore[arg-type]
    return ImportReport(documents=len(docs), **counts)
