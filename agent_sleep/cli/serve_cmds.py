"""``agent-sleep serve``: the live runtime behind an OpenAI-compatible HTTP API.

Loads the base model once, makes every agent's live stack ready, follows the
registry (deployments and rollbacks by other processes are hot-swapped within
a second) and answers ``/v1/chat/completions`` and ``/v1/models``.

The runtime's lines (``agent_sleep`` loggers: what each agent serves, every
switch to a deployment made elsewhere, a deployment it refuses) go to stderr
at ``--log-level``, next to uvicorn's, so a server beside ``agent-sleep
scheduler`` on one database says when a promoted run reached it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from agent_sleep.cli.common import positive_float, positive_int, settings_from


def cmd_serve(args: argparse.Namespace) -> int:
    from agent_sleep.models.loader import load_base_model, pull_model, is_default_spec
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.serving.cli import run_serve
    from agent_sleep.serving.live_resolver import LiveResolver
    from agent_sleep.store import ExperienceStore

    settings = settings_from(args)
    spec = args.model or settings.model
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("agent_sleep")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, str(getattr(args, "log_level", "info")).upper(), logging.INFO))
    try:
        if is_default_spec(spec):
            pull_model(spec, settings=settings)
        runtime = LiveRuntime(AdapterRegistry(ExperienceStore(settings=settings)),
                              handle=load_base_model(spec, settings=settings), max_delta_norm=args.max_delta_norm)
        runtime.sync()
        runtime.watch(interval=args.poll)
        try:
            return run_serve(args, LiveResolver(runtime, max_new_tokens=args.max_new_tokens))
        finally:
            runtime.stop()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from agent_sleep.serving.cli import add_serve_arguments

    p = sub.add_parser("serve", help="serve agents' live adapter stacks over an OpenAI-compatible HTTP API")
    add_serve_arguments(p)
    p.add_argument("--model", help="base model (default: $AGENT_SLEEP_MODEL or the bundled SmolLM2)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256,
                   help="default answer length in tokens when a request sets none (default 256)")
    p.add_argument("--poll", type=positive_float, default=0.25, help="seconds between registry checks (default 0.25)")
    p.add_argument("--max-delta-norm", type=positive_float, metavar="RATIO",
                   help="largest ||ΔW||/||W|| of any layer a stack may have to be served (default 1.0); use the bound "
                        "the deployments were validated with")  # fmt: skip
    p.set_defaults(handler=cmd_serve)
