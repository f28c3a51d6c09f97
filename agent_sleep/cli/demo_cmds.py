"""``agent-sleep demo``: the main job on the embedded defaults.

Runs the helpdesk example agent on the default local model against the default
SQLite database, then lists the episodes it logged.
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

from agent_sleep.cli.common import settings_from
from agent_sleep.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "01_helpdesk_agent.py"


def cmd_demo(args: argparse.Namespace) -> int:
    from agent_sleep.cli.store_cmds import cmd_episodes_list
    from agent_sleep.models.loader import pull_model
    from agent_sleep.store import ExperienceStore

    if not EXAMPLE.is_file():
        raise ConfigError(f"demo needs a source checkout: {EXAMPLE} not found")
    settings = settings_from(args)
    pull_model(settings=settings)
    store = ExperienceStore(settings=settings)
    namespace = runpy.run_path(str(EXAMPLE), run_name="agent_sleep_demo")
    namespace["main"](store=store)
    print()
    list_args = argparse.Namespace(**{**vars(args), "agent": "helpdesk", "since": None, "until": None, "status": None,
                                      "outcome": None, "min_score": None, "max_score": None, "unconsolidated": False,
                                      "limit": 10, "newest_first": True, "json": False})
    return cmd_episodes_list(list_args)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the example helpdesk agent on the default model and show what it logged")
    p.set_defaults(handler=cmd_demo)
