"""Deployment notifications over PostgreSQL LISTEN/NOTIFY: the channel, the sender and the listener.

The registry calls :func:`notify` inside the transaction that records a
deployment, so listeners hear of it only once it is committed; runtimes in
other processes :func:`listen` and re-read the registry at once instead of at
their next poll. Notifications are only a wake-up call (the payload is the
agent's name): the registry rows stay the source of truth, and on SQLite, or
when LISTEN is unavailable, followers simply poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

__all__ = ["CHANNEL", "listen", "notify"]

CHANNEL = "agent_sleep_deployments"


def notify(session: Session, agent: str) -> None:
    """Announce a new deployment for ``agent`` when ``session`` commits (no-op off PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:c, :a)"), {"c": CHANNEL, "a": agent})


def listen(url: str | URL, callback: Callable[[str | None], None], stop_event: threading.Event, *,
           interval: float) -> None:
    """Call ``callback`` now, then on each notification (with the agent) or after ``interval`` quiet seconds (None).

    LISTEN starts before the first call, so nothing committed after it is missed.
    Returns once ``stop_event`` is set (noticed within ``interval``); raises if the
    connection cannot be made or breaks (the caller falls back to polling).
    ``callback`` should not raise: an exception ends the loop.
    """
    import psycopg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        agent: str | None = None
        while not stop_event.is_set():
            callback(agent)
            agent = None
            for note in conn.notifies(timeout=interval, stop_after=1):
                agent = note.payload
