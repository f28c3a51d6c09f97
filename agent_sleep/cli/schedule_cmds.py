"""CLI for the scheduler: ``scheduler`` runs it; ``schedule list|add|remove`` edit the schedule table.

``agent-sleep scheduler [--config FILE] [--workers N] [--once]`` runs until SIGTERM (exit 0), one log
line per decision on stderr (see :mod:`agent_sleep.scheduling.service`; the online guard's too).
``schedule add --agent A`` with one of ``--cron "0 3 * * *"``, ``--every SECONDS``, ``--after-episodes N``,
``--on-documents`` (and ``--config FILE``: the cycle config of the runs it causes) prints the new
schedule's id; running schedulers pick it up at their next poll. ``sleep --agent A --enqueue`` (in
:mod:`.sleep_cmds`) asks the scheduler for a run from any process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from agent_sleep.cli.common import add_json_flag, iso_utc, positive_float, positive_int, print_json, settings_from


def _store(args: argparse.Namespace) -> Any:
    from agent_sleep.store import ExperienceStore

    return ExperienceStore(settings=settings_from(args))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from agent_sleep.scheduling.config import load_scheduler_config
    from agent_sleep.scheduling.service import SchedulerService

    config = load_scheduler_config(args.config, workers=args.workers, poll_seconds=args.poll_seconds,
                                   lease_seconds=args.lease_seconds,
                                   guard_every_seconds=args.guard_every_seconds)  # fmt: skip
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger = logging.getLogger("agent_sleep.scheduling")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    store = _store(args)
    try:
        return SchedulerService(store, config, role=args.role).run(once=args.once)
    finally:
        logger.removeHandler(handler)
        store.close()


def _when(rec: Any) -> str:
    from agent_sleep.scheduling.schedules import describe

    return describe(rec.kind, rec.spec)


def cmd_schedule_list(args: argparse.Namespace) -> int:
    from agent_sleep.scheduling.schedules import ScheduleStore

    store = _store(args)
    try:
        rows = ScheduleStore(store).list(agent=args.agent)
    finally:
        store.close()
    if args.json:
        for r in rows:
            print_json({**r.model_dump(), "when": _when(r)})
        return 0
    if not rows:
        print(f"no schedules for agent {args.agent!r}" if args.agent else "no schedules")
        return 0
    print(f"{'SCHEDULE':32}  {'AGENT':14} {'WHEN':32} {'LAST FIRED (UTC)':25}  CONFIG")
    for r in rows:
        fired = iso_utc(r.last_fired_at) if r.last_fired_at else "-"
        print(f"{r.id:32}  {r.agent:14} {_when(r):32} {fired:25}  {r.config_path or '(defaults)'}"
              + ("" if r.enabled else "  (disabled)"))
    return 0


def cmd_schedule_add(args: argparse.Namespace) -> int:
    from agent_sleep.consolidation.config import load_cycle_config
    from agent_sleep.scheduling.schedules import ScheduleStore

    if args.cron is not None:
        kind, spec = "cron", {"cron": args.cron}
    elif args.every is not None:
        kind, spec = "interval", {"seconds": args.every}
    elif args.after_episodes is not None:
        kind, spec = "new_episodes", {"min_episodes": args.after_episodes}
    else:
        kind, spec = "documents", {}
    if args.config is not None:
        load_cycle_config(args.config)  # a broken config is refused now, not at 3 am
    store = _store(args)
    try:
        rec, _ = ScheduleStore(store).add(args.agent, kind, spec, config_path=args.config)
    finally:
        store.close()
    if args.json:
        print_json({**rec.model_dump(), "when": _when(rec)})
    else:
        print(rec.id)
    return 0


def cmd_schedule_remove(args: argparse.Namespace) -> int:
    from agent_sleep.scheduling.schedules import ScheduleStore

    store = _store(args)
    try:
        rec = ScheduleStore(store).remove(args.schedule)
    finally:
        store.close()
    if args.json:
        print_json({**rec.model_dump(), "when": _when(rec), "removed": True})
        return 0
    print(f"removed schedule {rec.id} ({rec.agent}, {_when(rec)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "scheduler", help="run the scheduler: schedules, triggers and queued requests start sleep cycles",
        description="Long-running: fires cron/interval schedules, polls triggers (new episodes, new documents) "
        "and queued requests, and runs each agent's cycle under a per-agent lease, so several schedulers and "
        "workers may share one database. One log line per decision on stderr. SIGTERM: the run in progress "
        "stops at its next stage boundary, resumable, and the process exits 0.",
    )  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="scheduler config in YAML (poll_seconds, lease_seconds, "
                                                     "workers, guard_every_seconds, agents: their schedules and "
                                                     "online_guard)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, metavar="N", help="agents served at once by this process")
    p.add_argument("--poll-seconds", type=positive_float, metavar="S", help="how often to check triggers and requests")
    p.add_argument("--lease-seconds", type=positive_float, metavar="S",
                   help="how long an agent's lease lasts without renewal")  # fmt: skip
    p.add_argument("--guard-every-seconds", type=positive_float, metavar="S",
                   help="how often the online guard checks each agent with an online_guard section in the config "
                        "(default 300)")  # fmt: skip
    p.add_argument("--role", choices=("all", "timers", "worker"), default="all",
                   help="timers: only fire schedules and triggers; worker: only serve requests; all: both (default)")
    p.add_argument("--once", action="store_true", help="one poll: fire what is due, serve what waits, then exit")
    p.add_argument("--verbose", action="store_true", help="also log each run's progress lines")
    p.set_defaults(handler=cmd_scheduler)

    sched = sub.add_parser("schedule", help="schedules: list, add, remove",
                           description="When agents sleep: the schedule table every scheduler reads.")
    ssub = sched.add_subparsers(dest="schedule_command", metavar="COMMAND", required=True, title="commands")
    p = ssub.add_parser("list", help="list schedules")
    p.add_argument("--agent", help="only this agent's schedules")
    add_json_flag(p, "one JSON object per schedule")
    p.set_defaults(handler=cmd_schedule_list)
    p = ssub.add_parser("add", help="add a schedule; prints its id")
    p.add_argument("--agent", required=True, help="the agent to put to sleep")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help='a five-field crontab in UTC, e.g. "0 3 * * *"')
    when.add_argument("--every", type=positive_float, metavar="SECONDS", help="every N seconds")
    when.add_argument("--after-episodes", type=positive_int, metavar="N",
                      help="once N new episodes wait to be consolidated")  # fmt: skip
    when.add_argument("--on-documents", action="store_true", help="once a new or changed document waits")
    p.add_argument("--config", metavar="FILE", help="the cycle config (YAML) of the runs this schedule starts")
    add_json_flag(p, "print the schedule as one JSON object")
    p.set_defaults(handler=cmd_schedule_add)
    p = ssub.add_parser("remove", help="remove a schedule (its requests stay)")
    p.add_argument("schedule", metavar="ID", help="schedule id (or a unique prefix of at least 4 characters)")
    add_json_flag(p, "print the removed schedule as one JSON object")
    p.set_defaults(handler=cmd_schedule_remove)


__all__ = ["register"]
