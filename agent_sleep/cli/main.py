"""The ``agent-sleep`` command: one entry point, a subcommand per task.

Each ``agent_sleep/cli/*_cmds.py`` module exposes ``register(subparsers)``; its
handlers take the parsed namespace and return an exit code. Exit codes a cron
job can act on: 0 ok, 1 error (message on stderr), 2 bad usage (argparse's own
errors, and :class:`~agent_sleep.cli.common.UsageError`), 3 rejected by
validation (``deploy``) or by the gate (``sleep``). ``main(argv)`` returns the code, for a usage error
too; only ``--help`` and ``--version`` leave through ``SystemExit(0)``.

Every parser is a :class:`~agent_sleep.cli.common.CommandParser`, so the global
options work before or after the command, and a command registered with
``set_defaults(slow=...)`` reports on stderr what it is doing once it has taken
longer than a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from agent_sleep._version import __version__
from agent_sleep.cli.common import CommandParser, UsageError, slow_label, status_line
from agent_sleep.errors import AgentSleepError

EXIT_USAGE = 2

_COMMAND_MODULES = (
    "agent_sleep.cli.store_cmds",
    "agent_sleep.cli.model_cmds",
    "agent_sleep.cli.registry_cmds",
    "agent_sleep.cli.serve_cmds",
    "agent_sleep.cli.generate_cmds",
    "agent_sleep.cli.skill_cmds",
    "agent_sleep.cli.sleep_cmds",
    "agent_sleep.cli.schedule_cmds",
    "agent_sleep.cli.guard_cmds",
    "agent_sleep.cli.report_cmds",
    "agent_sleep.cli.demo_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="agent-sleep",
        description="Sleep-cycle learning for LLM agents: log experiences while awake, "
        "consolidate them into LoRA adapters while asleep.",
        epilog="Run 'agent-sleep COMMAND --help' for a command's options. Exit codes: 0 ok, 1 error, "
        "2 bad usage, 3 rejected by validation.",
    )
    parser.add_argument("--version", action="version", version=f"agent-sleep {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name in _COMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the problem
        if exc.code in (0, None):  # --help, --version
            raise
        return EXIT_USAGE
    try:
        with status_line(slow_label(args)):
            return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"{args.command_prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AgentSleepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
