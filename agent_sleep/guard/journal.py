"""The guard's journal: every check that :func:`~agent_sleep.guard.enforce` made, one JSON line each.

Why a file and not SQL: a rollback is a deployment, so it is recorded where deployments are (the
``deployments`` row, its ``detail`` holding the whole check), but a check that keeps the stack changes
nothing, and the schema has no table for it (deployments are history of what was live and are never
edited; an audit row there for each "keep" would make ``deployments`` lie). So every check, whatever
its decision, is appended to ``<data_dir>/guard/<agent>.jsonl``. The trade-off: on PostgreSQL shared
by several hosts, each host's journal holds the checks that host made; the rollbacks, the only checks
that changed anything, are in the shared database.

A scheduler may check every minute; between two looks (:func:`~agent_sleep.guard.check.looks`) a
check repeats the last one, so :func:`~agent_sleep.guard.enforce` passes a key (the deployment, the
action and the numbers) and a record whose key equals the last record's is not written again: the
journal grows by a line when something changed, not by a line per call.

Appending is crash-safe without rewriting the file: each record is one ``write`` of one line under an
exclusive ``flock`` (where the platform has it), fsynced. A process killed mid-write leaves at most a
torn last line: the next writer starts on a new line, and :func:`read_journal` skips (and counts) lines
that are not whole JSON records.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent_sleep.names import check_agent_name

__all__ = ["append_journal", "journal_path", "read_journal"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: appends are still single writes
    fcntl = None  # type: ignore[assignment]


def journal_path(data_dir: str | Path, agent: str) -> Path:
    """``<data_dir>/guard/<agent>.jsonl`` (agent names are safe file names: :mod:`agent_sleep.names`)."""
    return Path(data_dir) / "guard" / f"{check_agent_name(agent)}.jsonl"


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


_TAIL = 65536  # bytes read back to find the last record (a check is a few kB)


def _last_record(fd: int, size: int) -> dict[str, Any] | None:
    tail = os.pread(fd, min(size, _TAIL), max(0, size - _TAIL))
    for raw in reversed(tail.split(b"\n")):
        if raw.strip():
            try:
                value = json.loads(raw)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def append_journal(path: str | Path, record: dict[str, Any], *, key: str | None = None) -> bool:
    """Append ``record`` as one JSON line to ``path`` (created with its folder), fsynced; True if written.

    ``key``: stored with the record as ``"key"``; when the last record has the same key, nothing is
    written (a scheduler checking every minute adds a line when the verdict or its numbers change).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if key is not None:
        record = {**record, "key": key}
    line = (json.dumps(record, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)  # read: the last line
    try:
        with _locked(fd):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a killed writer: start afresh
                line = b"\n" + line
            elif size and key is not None and (_last_record(fd, size) or {}).get("key") == key:
                return False
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            return True
    finally:
        os.close(fd)


def read_journal(path: str | Path, *, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """(records oldest first — the newest ``limit`` when given —, number of lines skipped as torn or not JSON)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records: list[dict[str, Any]] = []
    skipped = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                skipped += 1
                continue
            if isinstance(value, dict):
                records.append(value)
            else:
                skipped += 1
    return (records[-limit:] if limit else records), skipped
