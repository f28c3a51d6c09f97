"""Who is running a consolidation run, and whether that owner is still there.

An owner is ``host:pid:token``; the token is new for each :func:`~.cycle.run_cycle` call, so a
scheduler that calls it again in the same process can tell its own live run from one an earlier
call left behind (the database went away, say). A running run's owner is alive while

* its heartbeat is younger than ``stale_after`` seconds, and
* on this host: its process exists, and if that process is this one, the token is still active here.

So a run whose process was killed (``kill -9``) is taken over at once by the next cycle on the same
host; one on another host after ``stale_after`` seconds without a heartbeat.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime

from agent_sleep.store.records import as_utc

__all__ = ["is_alive", "new_owner", "release"]

_ACTIVE: set[str] = set()
_LOCK = threading.Lock()


def new_owner() -> str:
    """A fresh owner name for one run_cycle call, active in this process until :func:`release`."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with _LOCK:
        _ACTIVE.add(owner)
    return owner


def release(owner: str) -> None:
    with _LOCK:
        _ACTIVE.discard(owner)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def is_alive(owner: str | None, heartbeat_at: datetime | None, *, now: datetime, stale_after: float) -> bool:
    """Whether ``owner`` may still be working on its run (see the module docstring)."""
    if not owner or heartbeat_at is None:
        return False
    beat = as_utc(heartbeat_at)
    assert beat is not None
    if (now - beat).total_seconds() > stale_after:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, _token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another host: only its heartbeat can tell
    pid = int(pid_text)
    if pid == os.getpid():
        with _LOCK:
            return owner in _ACTIVE
    return _process_exists(pid)
