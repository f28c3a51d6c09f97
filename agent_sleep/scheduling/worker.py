"""One agent, served once: take its lease, take its open requests, run (or resume) its cycle, record.

:meth:`Worker.serve` is what a scheduler thread does for an agent that has work, and it always ends in
one :class:`Served` value whose ``line`` says what happened and why (the service logs it):

1. **Lease** (:mod:`.leases`). Held by someone else: nothing happens (``held``). Ours: go on.
2. **What the last holder left.** The lease names the run its holder drove (``run_id``). If that run is
   still ``running``, its holder is gone (it released the lease without finishing, or its lease expired),
   so the run is declared orphaned (:meth:`~agent_sleep.consolidation.runs.RunStore.orphan`) and this
   worker *resumes it* rather than start a second one. A running run the lease does not name, whose owner
   still looks alive (an ``agent-sleep sleep`` started by hand), makes this a ``busy`` no-op: its requests
   wait for the next poll instead of recording a ``skipped_overlap`` run every few seconds.
3. **Requests** (:mod:`.requests`). All the agent's open requests are taken; they coalesce into this run.
4. **The cycle.** ``cycle`` (default :func:`~agent_sleep.consolidation.cycle.run_cycle`; injectable so a
   test or an embedding can supply its own) runs with the cycle config of the requests' schedule (or the
   request's own ``config``, or the agent's in the scheduler config, or the defaults) and a guard: the
   run's id goes onto the lease as soon as it is claimed, the lease is renewed on a heartbeat thread
   (:class:`~.leases.LeaseKeeper`), and the run stops at the next stage boundary, left resumable, once the
   lease is lost or the process is told to stop.
5. **The end.** A finished run marks every request with its id; a run left ``running`` (database gone,
   lease lost, shutting down) puts them back to ``pending`` and leaves its id on the lease for the next
   holder. The lease is released either way (or simply expires if the database is gone).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent_sleep.consolidation import owners
from agent_sleep.consolidation.config import CycleConfig, load_cycle_config
from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.errors import AgentSleepError, ConfigError, NotFoundError
from agent_sleep.scheduling.leases import Acquired, Held, LeaseKeeper, LeaseStore
from agent_sleep.scheduling.requests import RequestRecord, RequestStore
from agent_sleep.scheduling.schedules import ScheduleStore
from agent_sleep.store.models import utcnow
from agent_sleep.store.store import ExperienceStore

__all__ = ["CycleFn", "Served", "Worker", "new_worker_owner"]

log = logging.getLogger("agent_sleep.scheduling")

CycleFn = Callable[..., CycleResult]
"""``cycle(agent, *, config, store, resume, guard, progress) -> CycleResult``: run_cycle's signature."""

Action = Literal["ran", "resumed", "left", "held", "busy", "idle", "stopped", "error"]


def new_worker_owner() -> str:
    """``host:pid:token``, the lease owner of one serve (the format :mod:`~agent_sleep.consolidation.owners` reads)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Served:
    """What :meth:`Worker.serve` did for one agent, and the line that says why."""

    agent: str
    action: Action
    line: str
    run_id: str | None = None
    outcome: str | None = None
    requests: tuple[str, ...] = field(default_factory=tuple)


class _LeaseGuard:
    """The :class:`~agent_sleep.consolidation.cycle.RunGuard` of one serve: the lease, the requests, stop."""

    def __init__(self, worker: Worker, lease: Acquired, keeper: LeaseKeeper, taken: list[RequestRecord]) -> None:
        self.worker, self.lease, self.keeper, self.taken = worker, lease, keeper, taken
        self.run_id: str | None = None

    def claimed(self, run_id: str) -> None:
        self.run_id = run_id
        if not self.worker.leases.set_run(self.lease, run_id):
            self.keeper.mark_lost(f"the lease on {self.lease.agent!r} was taken over before run {run_id} started")
        self.worker.requests.attach([r.id for r in self.taken], run_id)

    def holds(self) -> str | None:
        if self.worker.stopping.is_set():
            return "the scheduler is shutting down"
        return self.keeper.lost


class Worker:
    """Serves agents one at a time with ``cycle`` (see the module docstring); thread-safe (no shared state
    but the store's connection pool)."""

    def __init__(self, store: ExperienceStore, *, lease_seconds: float = 60.0, cycle: CycleFn | None = None,
                 agent_configs: Mapping[str, Path] | None = None, stopping: threading.Event | None = None,
                 progress: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.store = store
        self.leases = LeaseStore(store, seconds=lease_seconds)
        self.requests = RequestStore(store)
        self.runs = RunStore(store)
        self.schedules = ScheduleStore(store)
        self.cycle = cycle or _default_cycle
        self.agent_configs = dict(agent_configs or {})
        self.stopping = stopping or threading.Event()
        self.progress = progress

    def serve(self, agent: str) -> Served:
        """Take the lease and serve the agent's open requests once (see the module docstring)."""
        if self.stopping.is_set():
            return Served(agent, "stopped", f"{agent}: not run: the scheduler is shutting down")
        owner = new_worker_owner()
        try:
            got = self.leases.acquire(agent, owner)
        except AgentSleepError as exc:
            return Served(agent, "error", f"{agent}: not run: could not take the lease: {exc}")
        if isinstance(got, Held):
            return Served(agent, "held", f"{agent}: not run: lease held by {got.owner} (token {got.token}) until "
                                         f"{got.expires_at:%H:%M:%S.%f} UTC by the database's clock")  # fmt: skip
        try:
            return self._serve(got)
        finally:
            try:
                self.leases.release(got)
            except AgentSleepError as exc:  # the database is gone: the lease expires by itself
                log.warning("%s: releasing the lease failed (it expires by itself): %s", agent, exc)

    # -- one serve, lease held ---------------------------------------------------------------------
    def _serve(self, lease: Acquired) -> Served:
        agent = lease.agent
        try:
            resume, note = self._left_behind(lease)
            busy = self.busy_elsewhere(agent, resume)
            if busy is not None:
                return Served(agent, "busy", f"{agent}: not run: {busy}")
            taken = self.requests.take(agent, worker=lease.owner)
        except AgentSleepError as exc:
            return Served(agent, "error", f"{agent}: not run: {exc}")
        ids = tuple(r.id for r in taken)
        if not taken and resume is None:
            return Served(agent, "idle", f"{agent}: nothing to do: no open request (another worker served them)")
        try:
            config, config_note = self._config(agent, taken)
        except ConfigError as exc:
            self.requests.finish(ids, None, "failed", error=str(exc))
            return Served(agent, "error", f"{agent}: not run: {exc}; {len(ids)} request(s) marked failed", None,
                          "failed", ids)  # fmt: skip
        keeper = LeaseKeeper(self.leases, lease)
        guard = _LeaseGuard(self, lease, keeper, taken)
        started = time.monotonic()
        say = self.progress or (lambda line: log.debug("%s: %s", agent, line))
        with keeper:
            try:
                result = self.cycle(agent, config=config, store=self.store, resume=resume, guard=guard,
                                    progress=lambda line: say(f"{agent}: {line}"))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - one agent's failure must not end the scheduler
                self._put_back(ids)
                expected = isinstance(exc, AgentSleepError)
                log.log(logging.WARNING if expected else logging.ERROR, "%s: the cycle raised", agent,
                        exc_info=not expected)  # fmt: skip
                return Served(agent, "error", f"{agent}: run {guard.run_id or '(not started)'} raised "
                                              f"{type(exc).__name__}: {exc}; {len(ids)} request(s) back to pending",
                              guard.run_id, None, ids)  # fmt: skip
        seconds = time.monotonic() - started
        why = self._why(taken, note, config_note)
        if result.status == "running" or result.outcome == "skipped_overlap":
            self._put_back(ids)
            return Served(agent, "left", f"{agent}: run {result.run_id} not finished ({result.error}); "
                                         f"{len(ids)} request(s) back to pending{why}",
                          result.run_id, result.outcome, ids)  # fmt: skip
        self.requests.finish(ids, result.run_id, result.outcome, error=result.error)
        self.leases.set_run(lease, None)
        verb = "resumed" if resume is not None else "ran"
        return Served(agent, "resumed" if resume is not None else "ran",
                      f"{agent}: {verb} run {result.run_id} for {len(ids)} request(s): {result.outcome} in "
                      f"{seconds:.1f} s{why}", result.run_id, result.outcome, ids)  # fmt: skip

    def _left_behind(self, lease: Acquired) -> tuple[str | None, str | None]:
        """(run to resume, why) from the run the lease names, if its holder left it unfinished."""
        if lease.previous_run is None:
            return None, None
        try:
            run = self.runs.get(lease.previous_run)
        except NotFoundError:
            self.leases.set_run(lease, None)
            return None, None
        if run.status != "running":
            self.leases.set_run(lease, None)
            return None, None
        self.runs.orphan(run.id)
        how = "whose lease expired" if lease.expired else "that released the lease"
        return run.id, (f"resuming run {run.id} left at stage {run.stage or 'start'} by "
                        f"{lease.previous_owner or 'a holder'} {how}")

    def busy_elsewhere(self, agent: str, resume: str | None = None) -> str | None:
        """A running run of the agent the lease does not name, whose owner looks alive (started by hand)."""
        now = utcnow()
        for run in self.runs.runs(agent=agent, limit=20):
            if run.status != "running" or run.id == resume:
                continue
            stale = float((run.config or {}).get("stale_after_seconds") or CycleConfig().stale_after_seconds)
            if owners.is_alive(run.owner, run.heartbeat_at, now=now, stale_after=stale):
                return (f"run {run.id} (owner {run.owner}, stage {run.stage or 'starting'}) is in progress outside "
                        "the scheduler; the requests wait")  # fmt: skip
        return None

    def _config(self, agent: str, taken: list[RequestRecord]) -> tuple[CycleConfig, str]:
        """The cycle config: the oldest request's own, or its schedule's, or the agent's; else the defaults."""
        for req in taken:
            detail = req.detail or {}
            path = detail.get("config")
            if path is None and detail.get("schedule"):
                try:
                    path = self.schedules.get(str(detail["schedule"])).config_path
                except NotFoundError:  # removed since it fired: its request still runs, on the defaults
                    path = None
            if path is not None:
                return load_cycle_config(path), f"config {path}"
        if agent in self.agent_configs:
            return load_cycle_config(self.agent_configs[agent]), f"config {self.agent_configs[agent]}"
        return CycleConfig(), "default config"

    @staticmethod
    def _why(taken: list[RequestRecord], note: str | None, config_note: str) -> str:
        sources: dict[str, int] = {}
        for r in taken:
            sources[r.source] = sources.get(r.source, 0) + 1
        parts = [", ".join(f"{k}" + (f" x{n}" if n > 1 else "") for k, n in sources.items())] if sources else []
        parts += [note] if note else []
        return f" [{'; '.join(parts + [config_note])}]"

    def _put_back(self, ids: tuple[str, ...]) -> None:
        try:
            self.requests.put_back(ids)
        except AgentSleepError as exc:  # still "running": the next holder takes them anyway
            log.warning("putting requests back failed (the next holder takes them anyway): %s", exc)


def _default_cycle(agent: str, **kwargs: Any) -> CycleResult:
    from agent_sleep.consolidation.cycle import run_cycle

    return run_cycle(agent, **kwargs)
