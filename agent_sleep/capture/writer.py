"""Background, batched, outage-proof writes of capture ops.

The agent's thread only appends to an in-memory deque; one daemon thread per
database drains it in batches of up to ``batch_size`` ops per transaction.

If the database is unreachable the batch goes back to the front of the queue, a
warning is issued once per outage, and the database is probed with back-off.
While it is down, everything queued is spilled (written and fsynced) to a JSONL
file under ``spill_dir`` at once and then every ``spill_interval`` seconds (0.25 s)
by a second daemon thread, so a crash, even ``kill -9``, loses at most what was
logged in the last ``spill_interval`` (plus one fsync); sooner when more than
``max_buffer`` ops wait. Spilled files are replayed, oldest first and before
anything newer, once the database is back, also by a later process that opens a
writer for the same database; every op is idempotent, so a replay cut short is
simply replayed again. Ops the database rejects as invalid (not unreachable) are
retried one by one and the rejected ones kept in ``dead-letter.jsonl``. No op is
dropped.

Ops may carry deferred work (see :mod:`agent_sleep.capture.deferred`); the
writer finishes it, in queue order, before an op is written or spilled.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from agent_sleep.capture.deferred import CaptureWarning, DeferredOps
from agent_sleep.errors import AgentSleepError, DatabaseUnavailableError, StoreError
from agent_sleep.store.ops import Op

log = logging.getLogger("agent_sleep.capture")
__all__ = ["BackgroundWriter", "CaptureWarning", "shared_writer", "spill_dir_for"]

_UNREACHABLE = (DatabaseUnavailableError, OperationalError, ConnectionError, OSError)


class BackgroundWriter:
    """Drains capture ops into a store from a daemon thread."""

    def __init__(
        self,
        store_factory: Callable[[], Any],
        *,
        spill_dir: Path,
        batch_size: int = 2000,
        flush_interval: float = 0.05,
        max_buffer: int = 50_000,
        retry_max: float = 5.0,
        spill_interval: float = 0.25,
        name: str = "default",
    ) -> None:
        self._factory = store_factory
        self._store: Any = None
        self.spill_dir = Path(spill_dir)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.retry_max = retry_max
        self.spill_interval = spill_interval
        self._deferred = DeferredOps()
        self._queue: deque[Op] = deque()
        # Guards the queue's front, spilling and the in-flight batch: ops leave the queue in order.
        self._lock = threading.Lock()
        self._inflight = False
        self._spill_live = False  # spill the queue on a timer (the database is down)
        self._spill_now = threading.Event()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stop = False
        self._down_since: float | None = None
        # Files left by an earlier process for the same database are replayed first.
        self._spill_pending = bool(self._spill_files())
        if not self._spill_pending:
            self._idle.set()
        self.written = 0
        self.spilled = 0
        self.dead_lettered = 0
        self._thread = threading.Thread(target=self._run, name=f"agent-sleep-writer-{name}", daemon=True)
        self._thread.start()
        self._spiller = threading.Thread(target=self._spill_loop, name=f"agent-sleep-spill-{name}", daemon=True)
        self._spiller.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- hot path -------------------------------------------------------------------
    def submit(self, op: Op) -> None:
        """Queue one op; never blocks on the database."""
        self._idle.clear()
        self._queue.append(op)
        if len(self._queue) >= self.batch_size:
            self._wake.set()
            if self._spill_live and len(self._queue) >= self.max_buffer:
                self._spill_now.set()

    def submit_many(self, ops: Sequence[Op]) -> None:
        self._idle.clear()
        self._queue.extend(ops)
        self._wake.set()

    # -- control --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def database_down(self) -> bool:
        return self._down_since is not None

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wake.set()
            if self._idle.wait(0.01):
                with self._lock:  # idle, queue and pending change together under the lock (a replay
                    # clears idle and pending at once): read them at one instant, not one by one
                    if self._idle.is_set() and not self._queue and not self._spill_pending:
                        return True
            if deadline is not None and time.monotonic() > deadline:
                return False

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the thread, and spill whatever could not be written."""
        if self._stop:
            return
        self.flush(timeout)
        self._stop = True
        self._stopped.set()
        self._wake.set()
        self._spill_now.set()
        self._thread.join(timeout=timeout)
        self._spiller.join(timeout=timeout)
        self._spill_queue(force=True)
        if self._store is not None:
            self._store.close()

    # -- writer thread -------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop:
            with self._lock:
                idle = not self._queue and not self._spill_pending
                if idle:
                    self._idle.set()
            if idle:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                continue
            try:
                self._ensure_store()
                if self._spill_live:
                    self._probe()
                self._replay_spills()
                self._drain_once()
                backoff = 0.1
            except _UNREACHABLE as exc:
                self._outage(exc)
                try:
                    self._spill_queue()  # on disk now; the spill thread keeps it so while the outage lasts
                except Exception:  # e.g. disk full: the ops stay queued
                    log.exception("agent-sleep could not spill buffered events")
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, self.retry_max)
            except Exception:  # never let the writer thread die
                log.exception("agent-sleep capture writer failed; retrying")
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, self.retry_max)

    def _ensure_store(self) -> None:
        if self._store is None:
            self._store = self._factory()

    def _probe(self) -> None:
        """Reach the database without taking ops off the queue (they stay spillable meanwhile)."""
        engine = getattr(self._store, "engine", None)
        if engine is not None:
            from agent_sleep.store.engine import check_connection

            check_connection(engine)
        with self._lock:
            self._spill_live = False  # from here on, order is kept by replaying spills before the queue

    def _take(self, n: int) -> list[Op]:
        """Pop and finish the ``n`` oldest ops; call with ``_lock`` held."""
        return [self._deferred.finish(self._queue.popleft()) for _ in range(min(n, len(self._queue)))]

    def _drain_once(self) -> None:
        with self._lock:
            batch = self._take(self.batch_size)
            if batch:
                self._idle.clear()  # flush() must wait for this batch's commit
                self._inflight = True
        if not batch:
            return
        try:
            self._write(batch)
        except _UNREACHABLE:
            with self._lock:
                self._queue.extendleft(reversed(batch))
                self._inflight = False
            raise
        except BaseException:
            with self._lock:
                self._inflight = False
            raise
        with self._lock:
            self._inflight = False
        self._recovered()

    # -- spilling while the database is down --------------------------------------------
    def _spill_queue(self, force: bool = False) -> None:
        with self._lock:
            # Never while a batch is in flight: it may come back to the queue's front, and spill
            # files must hold ops in queue order.
            if self._queue and (force or not self._inflight):
                ops = self._take(len(self._queue))
                try:
                    self._spill(ops)
                except BaseException:
                    self._queue.extendleft(reversed(ops))
                    raise

    def _spill_loop(self) -> None:
        while not self._stop:
            self._spill_now.wait(self.spill_interval if self._spill_live else 1.0)
            self._spill_now.clear()
            if self._spill_live and not self._stop:
                try:
                    self._spill_queue()
                except Exception:  # e.g. disk full: the ops stay queued, the writer retries
                    log.exception("agent-sleep could not spill buffered events")

    def _write(self, batch: list[Op]) -> None:
        try:
            self.written += self._store.write_ops(batch)
        except _UNREACHABLE:
            raise
        except (DBAPIError, StoreError, AgentSleepError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                raise DatabaseUnavailableError(str(exc)) from exc
            self._write_one_by_one(batch, exc)

    def _write_one_by_one(self, batch: list[Op], first_error: Exception) -> None:
        for op in batch:
            try:
                self.written += self._store.write_ops([op])
            except _UNREACHABLE:
                raise
            except Exception as exc:  # the database rejects this op: keep it, move on
                self._dead_letter(op, exc)
        log.debug("batch rejected (%s); wrote op by op", first_error)

    def _outage(self, exc: BaseException) -> None:
        if not self._spill_live:
            self._spill_live = True
            self._spill_now.set()  # the spill thread switches to its short interval now
        if self._down_since is None:
            self._down_since = time.time()
            warnings.warn(
                f"agent-sleep: experience database unreachable ({str(exc).splitlines()[0][:200]}); "
                f"spilling events to {self.spill_dir} (every {self.spill_interval:g}s) "
                "and writing them when it returns",
                CaptureWarning,
                stacklevel=2,
            )
            log.warning("experience database unreachable: %s", exc)
        if self._store is not None:
            try:
                self._store.engine.dispose()
            except Exception:  # pragma: no cover
                pass

    def _recovered(self) -> None:
        if self._down_since is not None:
            down = time.time() - self._down_since
            self._down_since = None
            warnings.warn(f"agent-sleep: experience database is back after {down:.1f}s; buffered events written",
                          CaptureWarning, stacklevel=2)
            log.warning("experience database back after %.1fs", down)

    # -- spill files -----------------------------------------------------------------
    def _spill_files(self) -> list[Path]:
        if not self.spill_dir.exists():
            return []
        return sorted(self.spill_dir.glob("spill-*.jsonl"))

    def _spill(self, ops: list[Op]) -> None:
        if not ops:
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"spill-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = self.spill_dir / f".{name}.tmp"
        with tmp.open("w", encoding="utf-8") as fh:
            for op in ops:
                fh.write(json.dumps(op, ensure_ascii=False, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.spill_dir / name)  # a reader never sees a half-written spill file
        self.spilled += len(ops)
        self._spill_pending = True

    def _replay_spills(self) -> None:
        if not self._spill_pending:
            return
        with self._lock:
            self._idle.clear()
            self._spill_pending = False  # a spill made meanwhile sets it again
        try:
            for path in self._spill_files():
                try:
                    lines = path.read_text(encoding="utf-8").splitlines()
                except FileNotFoundError:  # another process replayed it first
                    continue
                ops = [json.loads(line) for line in lines if line.strip()]
                for i in range(0, len(ops), self.batch_size):
                    self._write(ops[i : i + self.batch_size])  # idempotent, so a crash mid-file is safe
                path.unlink(missing_ok=True)
                self._recovered()
        except BaseException:
            self._spill_pending = True  # what is left on disk still goes before the queue
            raise

    def _dead_letter(self, op: Op, exc: Exception) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        with (self.spill_dir / "dead-letter.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"op": op, "error": str(exc).splitlines()[0][:500], "at": time.time()},
                                ensure_ascii=False, default=str) + "\n")
        self.dead_lettered += 1
        warnings.warn(f"agent-sleep: database rejected a captured {op.get('op')!r} op ({exc}); kept in "
                      f"{self.spill_dir / 'dead-letter.jsonl'}", CaptureWarning, stacklevel=2)


def _close_at_exit(ref: weakref.ref[BackgroundWriter]) -> None:
    writer = ref()
    if writer is not None:
        writer.close(timeout=5.0)


_WRITERS: dict[str, BackgroundWriter] = {}
_WRITERS_LOCK = threading.Lock()


def spill_dir_for(url: str, data_dir: Path) -> Path:
    return data_dir / "spill" / hashlib.sha256(url.encode()).hexdigest()[:12]


def shared_writer(url: str, data_dir: Path, factory: Callable[[], Any], **kwargs: Any) -> BackgroundWriter:
    """The process-wide writer for ``url`` (one thread and one pool per database)."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(url)
        if writer is None or writer._stop:
            writer = BackgroundWriter(factory, spill_dir=spill_dir_for(url, data_dir), name=url[-24:], **kwargs)
            _WRITERS[url] = writer
        return writer
