"""The scheduler process: ``agent-sleep scheduler``. Fires schedules, polls triggers, serves agents.

One :class:`SchedulerService` per process; any number of them (and of worker threads in each) may share
one database: the per-agent lease (:mod:`.leases`) makes sure only one runs an agent's cycle at a time,
and compare-and-set firing (:meth:`~.schedules.ScheduleStore.fire`) that a schedule's slot becomes one
request, however many schedulers see it. Every ``poll_seconds`` the service

1. reloads the ``schedules`` table (the source of truth) and, when it changed, rebuilds the timers
   (:class:`~.triggers.Timers`, APScheduler with its in-memory job store: it only fires timers);
2. checks the ``new_episodes`` and ``documents`` triggers, firing those that are due;
3. runs the online guard (:mod:`.guarding`) for each agent whose config has an ``online_guard:`` section,
   every ``guard_every_seconds``, under the agent's lease and only while no cycle of the agent runs (one
   busy now is checked at a later poll), on the polling thread (a check is a few small queries);
4. hands each agent with open requests (or with a run its last holder left unfinished) to a free
   worker thread (``workers`` of them), which serves it (:class:`~.worker.Worker`).

``role`` splits the work: ``timers`` processes only do 1-2, ``worker`` processes only 3-4 (say, one small
scheduler and a worker per GPU machine); ``all`` (the default) does everything.

Every decision is logged as one line (``agent-sleep.scheduling`` logger): why a run started, resumed or
did not, what fired, what was already enqueued by another scheduler. A line that would repeat the
previous one for the same subject (a trigger still not due, a lease still held) is logged once.

**Stopping.** :meth:`SchedulerService.stop` (SIGTERM and SIGINT in :meth:`run`) stops the timers and the
polling at once; a run in progress stops at its next stage boundary (the stage under way finishes), is
left resumable, its requests go back to ``pending``, and its lease is released; then :meth:`run` returns
(exit code 0). A second signal does not hurry it: a kill -9 is what ends a stage midway, and the lease
then expires and another worker resumes the run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from agent_sleep.errors import AgentSleepError
from agent_sleep.scheduling.config import SchedulerConfig
from agent_sleep.scheduling.guarding import Guarded, guard_agent
from agent_sleep.scheduling.leases import LeaseStore
from agent_sleep.scheduling.requests import RequestStore
from agent_sleep.scheduling.schedules import ScheduleRecord, ScheduleStore, describe
from agent_sleep.scheduling.triggers import Due, Timers, check_trigger
from agent_sleep.scheduling.worker import CycleFn, Served, Worker
from agent_sleep.store.store import ExperienceStore

__all__ = ["Role", "SchedulerService"]

Role = Literal["all", "timers", "worker"]
"""``timers``: fire schedules and triggers only; ``worker``: serve requests only; ``all``: both."""

log = logging.getLogger("agent_sleep.scheduling")


class SchedulerService:
    """A long-running scheduler on ``store``'s database (see the module docstring)."""

    def __init__(self, store: ExperienceStore, config: SchedulerConfig | None = None, *,
                 cycle: CycleFn | None = None, role: Role = "all",
                 say: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.store, self.role = store, role
        self.config = config or SchedulerConfig()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self._say = say or (lambda line: log.info("%s", line))
        self._last: dict[str, str] = {}
        self.schedules = ScheduleStore(store)
        self.requests = RequestStore(store)
        self.leases = LeaseStore(store, seconds=self.config.lease_seconds)
        agent_configs = {a: e.config for a, e in self.config.agents.items() if e.config is not None}
        self.worker = Worker(store, lease_seconds=self.config.lease_seconds, cycle=cycle, agent_configs=agent_configs,
                             stopping=self.stopping)  # fmt: skip
        self.timers = Timers(self._due)
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="agent-sleep-worker")
        self._inflight: dict[str, Future[Served]] = {}
        self._seen: tuple[Any, ...] | None = None
        self.served: list[Served] = []  # what this process's workers did, in order (for tests and --once)
        self.guards = {a: e.online_guard for a, e in self.config.agents.items() if e.online_guard is not None}
        self._guard_due: dict[str, float] = {}  # agent -> time.monotonic() of its next check (absent: now)
        self.guarded: list[Guarded] = []  # the guard checks this process made, in order (for tests and --once)

    # -- lines ---------------------------------------------------------------------------------------
    def say(self, line: str, *, key: str | None = None) -> None:
        """Log a decision; with ``key``, only when it differs from the last line for that key."""
        if key is not None:
            if self._last.get(key) == line:
                return
            self._last[key] = line
        self._say(f"scheduler {self.name}: {line}")

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Add the config file's schedules to the table (once), start the timers."""
        for agent, entry in self.config.agents.items():
            for sched in entry.schedules:
                kind, spec = sched.kind_spec()
                rec, created = self.schedules.add(agent, kind, spec, config_path=entry.config, declared=True)
                if created:
                    self.say(f"schedule {rec.id} added from the config: {agent}, {describe(kind, spec)}")
        if self.role != "worker":
            self.timers.start()
        self.say(f"started ({self.role}): {self.config.workers} worker(s), poll every {self.config.poll_seconds:g} s, "
                 f"lease {self.config.lease_seconds:g} s, database {self.store.safe_url}")  # fmt: skip
        if self.guards and self.role != "timers":
            which = ", ".join(f"{a} ({'rolls back' if c.enabled else 'journal only'})"
                              for a, c in sorted(self.guards.items()))  # fmt: skip
            self.say(f"online guard every {self.config.guard_every_seconds:g} s: {which}")

    def stop(self) -> None:
        """Stop taking work (see the module docstring); :meth:`run` then returns."""
        if not self.stopping.is_set():
            self.stopping.set()
            self.say("stopping: no new work; a run in progress stops at its next stage boundary, left resumable")

    def run(self, *, once: bool = False) -> int:
        """Poll until stopped (SIGTERM/SIGINT); ``once``: one poll, wait for its work, return. Exit code 0."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.start()
        try:
            while not self.stopping.is_set():
                self.poll()
                if once:
                    self.drain()
                    self.poll(serve=False)  # what the work just done made due (a trigger), enqueued for later
                    break
                self.stopping.wait(self.config.poll_seconds)
        finally:
            self.timers.stop()
            self.drain()
            self._pool.shutdown(wait=True)
            self.say("stopped")
        return 0

    def drain(self) -> None:
        """Wait for the work handed to the worker threads."""
        for fut in list(self._inflight.values()):
            fut.exception()  # waits; _reap reports what it raised
        self._reap()

    # -- one poll --------------------------------------------------------------------------------------
    def poll(self, *, serve: bool = True) -> None:
        """Refresh timers, check triggers, hand waiting agents to free workers. A database outage is logged."""
        try:
            if self.role != "worker":
                schedules = self.schedules.list(enabled_only=True)
                self._refresh(schedules)
                for sched in schedules:
                    if sched.kind in ("new_episodes", "documents"):
                        due, line = check_trigger(self.store, sched)
                        self.say(line, key=f"trigger:{sched.id}")
                        if due is not None:
                            self._due(due)
            if serve and self.role != "timers":
                self._reap()
                self._guard()
                self._dispatch()
        except AgentSleepError as exc:
            self.say(f"poll failed: {exc}; trying again in {self.config.poll_seconds:g} s", key="poll")
        else:
            self._last.pop("poll", None)

    def _refresh(self, schedules: list[ScheduleRecord]) -> None:
        seen = tuple((s.id, s.kind, tuple(sorted(s.spec.items())), s.config_path) for s in schedules)
        if seen == self._seen and not self.timers.retry_pending:
            return
        self._seen = seen
        for line in self.timers.sync(schedules):
            self.say(line)

    def _due(self, due: Due) -> None:
        sched = due.schedule
        req = self.schedules.fire(sched, due.fired_at, reason=due.reason, detail=due.detail, recount=due.recount)
        if req is None:
            self.say(f"schedule {sched.id} for {sched.agent}: {due.reason}: already enqueued (by another scheduler "
                     "or an earlier poll)", key=f"fire:{sched.id}")  # fmt: skip
        else:
            self.say(f"schedule {sched.id} for {sched.agent}: {due.reason}: request {req.id} enqueued",
                     key=f"fire:{sched.id}")  # fmt: skip

    def _guard(self) -> None:
        """Check each guarded agent that is due and has no cycle running in this process (see :mod:`.guarding`)."""
        for agent, config in sorted(self.guards.items()):
            now = time.monotonic()
            if self.stopping.is_set():
                return
            if now < self._guard_due.get(agent, 0.0):
                continue
            if agent in self._inflight:
                self.say(f"guard {agent}: not checked while its cycle runs in this process; trying again at the next "
                         "poll", key=f"guard:{agent}")  # fmt: skip
                continue
            try:
                done = guard_agent(self.worker, agent, config)
            except Exception as exc:  # noqa: BLE001 - a guard bug must not end the scheduler
                log.exception("guarding %s failed", agent)
                done = Guarded(agent, "error", f"guard {agent}: check failed: {type(exc).__name__}: {exc}")
            self.guarded.append(done)
            if done.action not in ("held", "busy"):  # a cycle runs: again at the next poll
                self._guard_due[agent] = time.monotonic() + self.config.guard_every_seconds
            self.say(done.line, key=None if done.action in ("rolled_back", "conflict") else f"guard:{agent}")

    def _dispatch(self) -> None:
        self._reap()
        if self.stopping.is_set():
            return
        waiting = set(self.requests.agents_waiting())
        waiting |= {lease.agent for lease in self.leases.all() if lease.run_id is not None}
        for agent in sorted(waiting):
            if agent in self._inflight:
                continue
            if len(self._inflight) >= self.config.workers:
                self.say(f"{len(waiting - set(self._inflight))} agent(s) wait for a free worker", key="workers")
                break
            self._inflight[agent] = self._pool.submit(self.worker.serve, agent)

    def _reap(self) -> None:
        for agent, fut in list(self._inflight.items()):
            if not fut.done():
                continue
            del self._inflight[agent]
            try:
                served = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker bug must not end the scheduler
                log.exception("serving %s failed", agent)
                served = Served(agent, "error", f"{agent}: serving failed: {type(exc).__name__}: {exc}")
            self.served.append(served)
            quiet = served.action in ("held", "busy", "idle", "stopped")
            self.say(served.line, key=f"agent:{agent}" if quiet else None)
            if not quiet:
                self._last.pop(f"agent:{agent}", None)

