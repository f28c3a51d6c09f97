"""Command-line glue for serving, for the ``agent-sleep`` CLI to wire in.

``add_serve_arguments(parser)`` adds ``--host``, ``--port`` and ``--api-key``;
``run_serve(args, resolver)`` serves until interrupted and returns an exit code.
The key defaults to ``$AGENT_SLEEP_API_KEY`` (read when the command runs).
"""

from __future__ import annotations

import argparse
import os

from agent_sleep.errors import ConfigError
from agent_sleep.serving.resolver import ModelResolver

API_KEY_ENV = "AGENT_SLEEP_API_KEY"


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV}; unset = no auth)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: info)",
    )  # fmt: skip
    return parser


def api_key_from(args: argparse.Namespace) -> str | None:
    key = getattr(args, "api_key", None)
    if key is None:
        key = os.environ.get(API_KEY_ENV)
    return key or None


def run_serve(args: argparse.Namespace, resolver: ModelResolver) -> int:
    """Serve ``resolver`` with the parsed arguments; returns 0 after a clean shutdown."""
    from agent_sleep.serving.server import serve

    port = int(getattr(args, "port", 8000))
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    serve(
        resolver,
        host=getattr(args, "host", "127.0.0.1"),
        port=port,
        api_key=api_key_from(args),
        log_level=getattr(args, "log_level", "info"),
    )
    return 0


__all__ = ["API_KEY_ENV", "add_serve_arguments", "api_key_from", "run_serve"]
