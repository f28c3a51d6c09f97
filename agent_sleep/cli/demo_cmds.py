"""``agent-sleep demo``: the main job on the embedded defaults.

Runs the helpdesk agent (:mod:`agent_sleep.demo.helpdesk`) on the default local
model against the default SQLite database, then lists the episodes it logged.
"""

from __future__ import annotations

import argparse

from agent_sleep.cli.common import settings_from


def cmd_demo(args: argparse.Namespace) -> int:
    from agent_sleep.cli.store_cmds import cmd_episodes_list
    from agent_sleep.demo import helpdesk
    from agent_sleep.models.loader import pull_model
    from agent_sleep.store import ExperienceStore

    settings = settings_from(args)
    pull_model(settings=settings)
    turns = helpdesk.main(store=ExperienceStore(settings=settings))
    print("\nWhat was logged (agent-sleep episodes list --agent helpdesk):")
    list_args = argparse.Namespace(**{**vars(args), "agent": helpdesk.AGENT, "since": None, "until": None,
                                      "status": None, "outcome": None, "min_score": None, "max_score": None,
                                      "unconsolidated": False, "limit": 10, "newest_first": True, "json": False})
    code = cmd_episodes_list(list_args)
    if turns:
        print(f"\nOne episode in full: agent-sleep episodes show {turns[0].episode_id}")
    return code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the helpdesk agent on the default model and show what it logged")
    p.set_defaults(handler=cmd_demo)
