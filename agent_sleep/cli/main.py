"""The ``agent-sleep`` command: one entry point, a subcommand per task.

Each ``agent_sleep/cli/*_cmds.py`` module exposes ``register(subparsers)``; its
handlers take the parsed namespace and return an exit code. Exit codes a cron
job can act on: 0 ok, 1 error, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from agent_sleep._version import __version__
from agent_sleep.errors import AgentSleepError

_COMMAND_MODULES = (
    "agent_sleep.cli.store_cmds",
    "agent_sleep.cli.model_cmds",
    "agent_sleep.cli.registry_cmds",
    "agent_sleep.cli.serve_cmds",
    "agent_sleep.cli.generate_cmds",
    "agent_sleep.cli.demo_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-sleep",
        description="Sleep-cycle learning for LLM agents: log experiences while awake, "
        "consolidate them into LoRA adapters while asleep.",
    )
    parser.add_argument("--version", action="version", version=f"agent-sleep {__version__}")
    parser.add_argument("--data-dir", help="data directory (default: $AGENT_SLEEP_DATA_DIR or ./.agent_sleep)")
    parser.add_argument("--db", dest="database_url", help="SQLAlchemy URL (default: $AGENT_SLEEP_DATABASE_URL or SQLite in the data dir)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AgentSleepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
