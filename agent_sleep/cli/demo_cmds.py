"""``agent-sleep demo``: the main job on the embedded defaults.

Runs the awake half of a day in the life of the helpdesk agent
(:mod:`agent_sleep.demo.day`) on the default local model against the default
SQLite database: two new documents are stored, the LangGraph agent answers the
day's customers (every conversation logged, wrong answers corrected), then it is
asked held-out rephrasings of what it missed. Then it lists the episodes logged.
"""

from __future__ import annotations

import argparse

from agent_sleep.cli.common import settings_from


def cmd_demo(args: argparse.Namespace) -> int:
    from agent_sleep.cli.store_cmds import cmd_episodes_list
    from agent_sleep.demo import day
    from agent_sleep.models.loader import pull_model
    from agent_sleep.store import ExperienceStore

    settings = settings_from(args)
    pull_model(settings=settings)
    content = day.load_day()
    log, _before = day.main(store=ExperienceStore(settings=settings), content=content)
    print(f"\nWhat was logged (agent-sleep episodes list --agent {content.agent}):")
    list_args = argparse.Namespace(**{**vars(args), "agent": content.agent, "since": None, "until": None,
                                      "status": None, "outcome": None, "min_score": None, "max_score": None,
                                      "unconsolidated": False, "limit": 10, "newest_first": True, "json": False})
    code = cmd_episodes_list(list_args)
    if log.answers:
        print(f"\nOne episode in full: agent-sleep episodes show {log.answers[0].episode_id}")
    return code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="a day at the helpdesk: the agent answers customers, gets corrections, logs it all")
    p.set_defaults(handler=cmd_demo)
