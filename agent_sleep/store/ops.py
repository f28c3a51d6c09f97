"""Write operations as plain JSON-able dicts, applied in one transaction.

Capture queues these in memory, spills them to a file when the database is
down, and replays them later; so every op carries its own client-made id and
applying the same op twice is a no-op (inserts ignore duplicates).

    {"op": "agent", "name", "meta"?, "ts"}
    {"op": "episode_start", "id", "agent", "thread_id"?, "meta"?, "ts"}
    {"op": "event", "id", "episode_id", "seq", "kind", "name"?, "content", "payload"?, "ts"}
    {"op": "episode_end", "id", "status", "outcome"?, "error"?, "ts"}
    {"op": "feedback", "id", "episode_id", "score"?, "label"?, "comment"?, "source", "ts"}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, update
from sqlalchemy.dialects import postgresql, sqlite

from agent_sleep.errors import InvalidEventError
from agent_sleep.store.models import Agent, Episode, Event, Feedback
from agent_sleep.store.records import as_utc

Op = dict[str, Any]
OP_KINDS = ("agent", "episode_start", "event", "episode_end", "feedback")


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - other backends: plain insert, duplicates raise
        stmt = table.insert()
    conn.execute(stmt, list(rows))


def apply_ops(conn: Connection, ops: Iterable[Op]) -> int:
    """Apply ``ops`` on ``conn`` (inside the caller's transaction); returns how many."""
    groups: dict[str, list[Op]] = {k: [] for k in OP_KINDS}
    n = 0
    for op in ops:
        kind = op.get("op")
        if kind not in groups:
            raise InvalidEventError(f"unknown write op {kind!r}; expected one of {', '.join(OP_KINDS)}")
        groups[kind].append(op)
        n += 1

    agents = {o["name"]: o for o in groups["agent"]}
    for o in groups["episode_start"]:
        agents.setdefault(o["agent"], {"name": o["agent"], "ts": o["ts"]})
    insert_ignore(
        conn,
        Agent.__table__,  # type: ignore[arg-type]
        [{"name": a["name"], "created_at": as_utc(a["ts"]), "metadata": a.get("meta") or {}} for a in agents.values()],
    )
    insert_ignore(
        conn,
        Episode.__table__,  # type: ignore[arg-type]
        [
            {
                "id": o["id"], "agent": o["agent"], "thread_id": o.get("thread_id"),
                "started_at": as_utc(o["ts"]), "ended_at": None, "status": "running", "outcome": None,
                "error": None, "metadata": o.get("meta") or {}, "consolidated_at": None, "consolidation_run": None,
            }
            for o in groups["episode_start"]
        ],
    )
    insert_ignore(
        conn,
        Event.__table__,  # type: ignore[arg-type]
        [
            {
                "id": o["id"], "episode_id": o["episode_id"], "seq": o["seq"], "kind": o["kind"],
                "name": o.get("name"), "content": o.get("content") or "", "payload": o.get("payload") or {},
                "created_at": as_utc(o["ts"]),
            }
            for o in groups["event"]
        ],
    )
    if groups["episode_end"]:
        table = Episode.__table__
        stmt = (
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("_id"))
            .values(
                ended_at=bindparam("_ended"), status=bindparam("_status"),
                outcome=func.coalesce(bindparam("_outcome"), table.c.outcome), error=bindparam("_error"),
            )
        )
        conn.execute(
            stmt,
            [
                {"_id": o["id"], "_ended": as_utc(o["ts"]), "_status": o["status"],
                 "_outcome": o.get("outcome"), "_error": o.get("error")}
                for o in groups["episode_end"]
            ],
        )
    insert_ignore(
        conn,
        Feedback.__table__,  # type: ignore[arg-type]
        [
            {
                "id": o["id"], "episode_id": o["episode_id"], "score": o.get("score"), "label": o.get("label"),
                "comment": o.get("comment"), "source": o.get("source", "human"), "created_at": as_utc(o["ts"]),
            }
            for o in groups["feedback"]
        ],
    )
    return n
