"""Write operations as plain JSON-able dicts, applied in one transaction.

Capture queues these in memory, spills them to a file when the database is
down, and replays them later; so every op carries its own client-made id and
applying the same op twice is a no-op (inserts ignore duplicates).

    {"op": "agent", "name", "meta"?, "ts"}
    {"op": "episode_start", "id", "agent", "thread_id"?, "meta"?, "ts"}
    {"op": "event", "id", "episode_id", "seq", "kind", "name"?, "content", "payload"?, "ts"}
    {"op": "episode_end", "id", "status", "outcome"?, "error"?, "ts"}
    {"op": "feedback", "id", "episode_id", "score"?, "label"?, "comment"?, "correction"?, "instruction"?, "source",
     "ts"}

An ``event`` or ``episode_end`` op may carry ``"cont": {"run", "target"?, "agent"?, "thread_id"?,
"value"?, "meta"?}``: it belongs to a later run (``run``, e.g. a graph resumed with
``Command(resume=...)``, or a process that did not start the episode) that continues an
episode, and its ``seq`` counts from 0 within that run. The first such op decides which
episode: ``target`` if given (it must exist), else the newest ``interrupted`` episode of
``agent`` on ``thread_id``. It writes a ``resume`` event whose *event id is the run id*
(content: ``value``) after that episode's last event, reopens it if it was interrupted, and
the run's ops land after it. That event is the persistent record of the decision, so
replaying the same ops gives the same episode and seqs, and the run id can be used wherever
an episode id is read. With nothing to continue the run becomes an episode of its own, with
id ``run`` (starting with the ``resume`` event when there is a ``value``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agent_sleep.errors import InvalidEventError
from agent_sleep.store.models import Agent, Episode, Event, Feedback
from agent_sleep.store.records import as_utc, normalize_episode_id

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
    placed: dict[str, tuple[str, int]] = {}  # continuation run -> (episode id, seq of its resume event)
    pending: list[Op] = []
    n = 0
    for op in ops:
        cont = op.get("cont") if isinstance(op, dict) else None
        if cont:
            run = str(cont.get("run") or "")
            if not run:
                raise InvalidEventError(f"continuation of a {op.get('op')!r} op has no run id")
            if run not in placed:
                # What came before (e.g. the interrupted run's end) must be visible to the decision.
                n += _apply_in_groups(conn, pending)
                pending = []
                placed[run] = _place_continuation(conn, cont, op)
            op = _rebased(op, *placed[run])
        pending.append(op)
    return n + _apply_in_groups(conn, pending)


def _rebased(op: Op, episode_id: str, base: int) -> Op:
    """A copy of ``op`` moved into the continued episode (the op itself is left as queued)."""
    out = {k: v for k, v in op.items() if k != "cont"}
    if op.get("op") == "episode_end":
        out["id"] = episode_id
    elif op.get("op") == "event":
        out["episode_id"], out["seq"] = episode_id, base + 1 + int(op["seq"])
    else:
        raise InvalidEventError(f"a {op.get('op')!r} op cannot continue an episode")
    return out


def _place_continuation(conn: Connection, cont: dict[str, Any], op: Op) -> tuple[str, int]:
    """(episode id, seq after which the run's events go) for continuation ``cont``, decided once."""
    events, episodes = Event.__table__, Episode.__table__
    run = str(cont["run"])
    seen = conn.execute(select(events.c.episode_id, events.c.seq).where(events.c.id == run)).first()
    if seen is not None:
        return str(seen[0]), int(seen[1])
    if conn.execute(select(episodes.c.id).where(episodes.c.id == run)).first() is not None:
        return run, -1  # decided earlier: the run is an episode of its own
    target = normalize_episode_id(cont["target"]) if cont.get("target") else None
    if target:
        if conn.execute(select(episodes.c.id).where(episodes.c.id == target)).first() is None:
            raise InvalidEventError(f"no episode with id {target!r} to continue (run {run})")
    else:
        agent, thread = cont.get("agent"), cont.get("thread_id")
        if not agent:
            raise InvalidEventError(f"continuation {run} names neither an episode nor an agent")
        if thread is not None:
            target = conn.execute(
                select(episodes.c.id)
                .where(episodes.c.agent == agent, episodes.c.thread_id == thread, episodes.c.status == "interrupted")
                .order_by(episodes.c.started_at.desc(), episodes.c.id.desc()).limit(1)
            ).scalar()
        if target is None:  # nothing to continue: the run is an episode of its own
            _apply_in_groups(conn, [{"op": "episode_start", "id": run, "agent": agent, "thread_id": thread,
                                     "meta": cont.get("meta") or {}, "ts": op["ts"]}])
            if not cont.get("value"):
                return run, -1
            target = run
    last = conn.execute(select(func.max(events.c.seq)).where(events.c.episode_id == target)).scalar()
    base = 0 if last is None else int(last) + 1
    conn.execute(events.insert(), [{  # type: ignore[attr-defined]
        "id": run, "episode_id": target, "seq": base, "kind": "resume", "name": None,
        "content": cont.get("value") or "", "payload": {"run_id": run}, "created_at": as_utc(op["ts"]),
    }])
    conn.execute(update(episodes).where(episodes.c.id == target, episodes.c.status == "interrupted")  # type: ignore[arg-type]
                 .values(status="running", ended_at=None))
    return str(target), base


def _apply_in_groups(conn: Connection, ops: Iterable[Op]) -> int:
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
                "correction": o.get("correction"), "instruction": o.get("instruction"),
            }
            for o in groups["feedback"]
        ],
    )
    return n
