"""Command-line glue for serving, for the ``agent-sleep`` CLI to wire in.

``add_serve_arguments(parser)`` adds ``--host``, ``--port``, ``--api-key``,
``--api-keys``, ``--max-tokens-limit``, ``--max-body-bytes`` and ``--log-level``;
``run_serve(args, resolver)`` serves until interrupted and returns an exit code.
The key defaults to ``$AGENT_SLEEP_API_KEY`` and the keys file to
``$AGENT_SLEEP_API_KEYS_FILE`` (read when the command runs).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from pydantic import ValidationError

from agent_sleep.errors import ConfigError
from agent_sleep.serving.resolver import ModelResolver

API_KEY_ENV = "AGENT_SLEEP_API_KEY"
API_KEYS_FILE_ENV = "AGENT_SLEEP_API_KEYS_FILE"


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV}; unset = no auth)",
    )
    parser.add_argument(
        "--api-keys", metavar="FILE", default=None,
        help="JSON/YAML file {key: \"*\" | [agent names]}: keys limited to some agents' models; another "
             f"agent's model is 404 as if it did not exist (default: ${API_KEYS_FILE_ENV})",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens-limit", type=int, default=None,
        help="largest max_tokens a request may ask for; also caps the default answer length (default: 2048)",
    )  # fmt: skip
    parser.add_argument(
        "--max-body-bytes", type=int, default=None,
        help="largest request body; larger is 413 before it is parsed (default: 4194304 = 4 MiB)",
    )  # fmt: skip
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


def api_keys_from(args: argparse.Namespace) -> Any:
    """The :class:`~agent_sleep.serving.auth.APIKeys` of ``--api-keys`` / ``$AGENT_SLEEP_API_KEYS_FILE`` (or None)."""
    from agent_sleep.serving.auth import APIKeys

    path = getattr(args, "api_keys", None) or os.environ.get(API_KEYS_FILE_ENV)
    return APIKeys.from_file(path) if path else None


def limits_from_args(args: argparse.Namespace) -> Any:
    """:class:`~agent_sleep.serving.limits.ServingLimits` from the flags (a :class:`ConfigError` naming bad ones)."""
    from agent_sleep.serving.limits import limits_from

    flags = {"max_tokens": "--max-tokens-limit", "max_body_bytes": "--max-body-bytes"}
    try:
        return limits_from(
            max_tokens=getattr(args, "max_tokens_limit", None), max_body_bytes=getattr(args, "max_body_bytes", None)
        )
    except ValidationError as exc:
        problems = [f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("; ".join(problems)) from None


def run_serve(args: argparse.Namespace, resolver: ModelResolver) -> int:
    """Serve ``resolver`` with the parsed arguments; returns 0 after a clean shutdown (Ctrl+C or SIGTERM)."""
    from agent_sleep.serving.server import serve

    port = int(getattr(args, "port", 8000))
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    serve(
        resolver,
        host=getattr(args, "host", "127.0.0.1"),
        port=port,
        api_key=api_key_from(args),
        api_keys=api_keys_from(args),
        limits=limits_from_args(args),
        log_level=getattr(args, "log_level", "info"),
    )
    return 0


__all__ = ["API_KEYS_FILE_ENV", "API_KEY_ENV", "add_serve_arguments", "api_key_from", "api_keys_from",
           "limits_from_args", "run_serve"]  # fmt: skip
