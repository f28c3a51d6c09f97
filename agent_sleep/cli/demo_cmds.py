"""``agent-sleep demo``: the main job on the embedded defaults — a day in the life of the helpdesk agent.

The awake half (:mod:`agent_sleep.demo.day`): two new documents are stored, the LangGraph agent on
the default local model answers the day's customers (every conversation logged, wrong answers
corrected by a support lead), then it is asked held-out rephrasings of what it missed. The asleep
half (:mod:`agent_sleep.demo.night`): one real consolidation cycle, the same rephrasings asked of the
live stack (a before/after table), a harmful adapter the gate refuses, and a rollback.

Each run uses a fresh data directory under the configured one (``demo/<UTC time>``), so the agent
always starts the day on the base model; the commands to inspect it afterwards are printed.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from agent_sleep.cli.common import settings_from


def cmd_demo(args: argparse.Namespace) -> int:
    from agent_sleep.demo import day, night
    from agent_sleep.models.loader import pull_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    started = time.monotonic()
    base = settings_from(args)
    pull_model(settings=base)
    folder = base.data_dir.expanduser() / "demo" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    settings = base.model_copy(update={"data_dir": folder, "database_url": None})
    store = ExperienceStore(settings=settings)
    content = day.load_day()
    with LiveRuntime(AdapterRegistry(store)) as runtime:
        chat = runtime.chat_model(content.agent, max_new_tokens=48)
        log, before = day.main(model=chat, store=store, content=content)
        if not args.awake_only and before:
            night.sleep_and_wake(runtime, content, log, before, harmful=not args.no_harmful)
    minutes = (time.monotonic() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Everything is in {folder}; look around with:\n"
          f"  agent-sleep --data-dir {folder} runs list\n"
          f"  agent-sleep --data-dir {folder} runs explain RUN\n"
          f"  agent-sleep --data-dir {folder} deployments {content.agent}\n"
          f"  agent-sleep --data-dir {folder} episodes list --agent {content.agent}")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="a day in the life: the agent answers customers, is corrected, sleeps, wakes up better")
    p.add_argument("--awake-only", action="store_true", help="only the day: no sleep cycle")
    p.add_argument("--no-harmful", action="store_true", help="skip the harmful-adapter step")
    p.set_defaults(handler=cmd_demo)
