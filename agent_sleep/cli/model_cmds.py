"""CLI for base models: ``model pull``, ``model info`` and ``ask``.

``ask`` puts one question (or a JSONL file of them) to the local model, which
is the quickest way to see what an agent's model answers before and after a
sleep cycle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent_sleep.cli.common import add_json_flag, positive_int, print_json, settings_from, time_text
from agent_sleep.config import DEFAULT_MODEL, Settings
from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.names import did_you_mean


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_model_pull(args: argparse.Namespace) -> int:
    from agent_sleep.models.loader import model_content_hash, pull_model

    settings = settings_from(args)
    path = pull_model(args.spec, settings=settings, progress=_stderr)
    if args.json:
        print_json({"spec": args.spec or settings.model, "path": str(path), "content_hash": model_content_hash(path)})
        return 0
    print(f"path  {path}")
    print(f"hash  {model_content_hash(path)}")
    return 0


def _model_info(spec: str | None, settings: Settings) -> dict[str, Any]:
    from agent_sleep.models.loader import SIDECAR, weight_files, resolve_model

    resolved = resolve_model(spec, settings)
    info: dict[str, Any] = {"spec": resolved.spec, "path": str(resolved.path), "content_hash": resolved.content_hash}
    try:
        sidecar = json.loads((resolved.path / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sidecar = {}
    for key in ("source", "dtype", "created_at", "transformers_version"):
        if key in sidecar:
            info[key] = time_text(sidecar[key]) if key == "created_at" else sidecar[key]
    config = json.loads((resolved.path / "config.json").read_text(encoding="utf-8"))
    for key in ("model_type", "architectures", "num_hidden_layers", "hidden_size", "vocab_size",
                "max_position_embeddings", "torch_dtype", "dtype"):  # fmt: skip
        if key in config:
            info[key] = config[key]
    info["weights_bytes"] = sum(p.stat().st_size for p in weight_files(resolved.path))
    return info


def cmd_model_info(args: argparse.Namespace) -> int:
    info = _model_info(args.spec, settings_from(args))
    if args.json:
        print_json(info)
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:{width}}  {value}")
    return 0


def _read_questions(path: str) -> list[tuple[int, dict[str, Any]]]:
    """Validate the whole file first, so a bad line fails before the model loads."""
    text = sys.stdin.read() if path == "-" else _read_text(Path(path))
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise InvalidInputError(f'{path}:{number}: expected an object like {{"question": "..."}}')
        items.append((number, obj))
    if not items:
        raise InvalidInputError(f"{path}: no questions")
    return items


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read questions file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"questions file {path} is not UTF-8") from None


def _build_chat_model(args: argparse.Namespace, settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The chat model ``ask`` talks to, and what to add to each JSON answer (which agent, which deployment).

    Names are checked before the model loads: an unknown agent or adapter fails fast.
    """
    from agent_sleep.models.loader import is_default_spec, load_base_model, pull_model
    from agent_sleep.runtime.chat_model import ChatLocalModel

    agent, adapters = getattr(args, "agent", None), getattr(args, "adapter", None)
    registry = None
    if agent or adapters:
        from agent_sleep.registry import AdapterRegistry
        from agent_sleep.registry.refs import check_one_per_skill
        from agent_sleep.store import ExperienceStore

        registry = AdapterRegistry(ExperienceStore(settings=settings))
        if adapters:
            check_one_per_skill(adapters)
            for ref in adapters:
                registry.get(ref)
        else:
            _require_agent(registry.store.agents(), agent)
    spec = args.model or settings.model
    if is_default_spec(spec):
        pull_model(spec, settings=settings, progress=_stderr)  # a no-op once converted; otherwise says why we wait
    handle = load_base_model(spec, settings=settings)
    if registry is None:
        return ChatLocalModel(model=spec, handle=handle, max_new_tokens=args.max_new_tokens), {}
    from agent_sleep.runtime.live import LiveRuntime

    runtime = LiveRuntime(registry, handle=handle)
    if adapters:
        return runtime.chat_model(adapters=adapters, max_new_tokens=args.max_new_tokens), {}
    state = runtime.load(agent)
    if state is None:
        why = "has no deployment yet" if runtime.last_sync_error is None else \
            f"has a live stack this model refuses ({runtime.last_sync_error})"
        _stderr(f"note: agent {agent!r} {why}; answering with the base model")
    extra = {"agent": agent, "deployment": state.version if state is not None else None}
    return runtime.chat_model(agent, max_new_tokens=args.max_new_tokens), extra


def _require_agent(known: list[str], agent: str) -> None:
    """An agent ``ask`` may answer as: one the store knows (from capture or a deploy)."""
    if agent not in known:
        hint = did_you_mean(agent, known) if known else "; there are no agents yet (capture or deploy creates one)"
        raise NotFoundError(f"no agent named {agent!r}{hint}")


def _answer(chat: Any, question: str, system: str | None) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage, SystemMessage

    messages = [SystemMessage(system)] if system else []
    started = time.perf_counter()
    reply = chat.invoke([*messages, HumanMessage(question)])
    seconds = time.perf_counter() - started
    usage = reply.usage_metadata or {}
    meta = reply.response_metadata
    return {
        "question": question,
        "answer": reply.text,
        "seconds": round(seconds, 3),
        "model": meta.get("model"),
        "content_hash": meta.get("content_hash"),
        "stack": meta.get("stack"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "finish_reason": meta.get("finish_reason"),
    }


def cmd_ask(args: argparse.Namespace) -> int:
    if (args.question is None) == (args.questions is None):
        _stderr("error: give either a QUESTION or --questions FILE.jsonl")
        return 2
    settings = settings_from(args)
    batch = _read_questions(args.questions) if args.questions else None
    chat, extra = _build_chat_model(args, settings)
    if batch is None:
        result = {**_answer(chat, args.question, args.system), **extra}
        if args.json:
            print_json(result)
        else:
            print(result["answer"])
        return 0
    for number, item in batch:
        result = _answer(chat, item["question"], item.get("system") or args.system)
        ids = {"id": item["id"]} if "id" in item else {}
        print_json({"line": number, **ids, **result, **extra})
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    model = sub.add_parser("model", help="install and inspect base models")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True, title="actions")

    pull = model_sub.add_parser("pull", help="install a model (default: convert the bundled SmolLM2 once)")
    pull.add_argument("spec", nargs="?", help=f"model alias, folder or Hugging Face id (default: {DEFAULT_MODEL})")
    add_json_flag(pull, "print the model's spec, path and content hash as JSON")
    pull.set_defaults(handler=cmd_model_pull, slow=lambda a: f"pulling {a.spec or 'the default model'}")

    info = model_sub.add_parser("info", help="show where a model lives, its content hash and shape")
    info.add_argument("spec", nargs="?", help=f"model alias, folder or Hugging Face id (default: {DEFAULT_MODEL})")
    add_json_flag(info, "print one JSON object")
    info.set_defaults(handler=cmd_model_info)

    ask = sub.add_parser("ask", help="ask the local model a question")
    ask.add_argument("question", nargs="?", help="the question (or use --questions)")
    ask.add_argument("--questions", metavar="FILE.jsonl",
                     help='one {"question": ...} object per line ("-" for stdin); prints one JSON object per line')
    ask.add_argument("--model",
                     help=f"model alias, folder or Hugging Face id (default: $AGENT_SLEEP_MODEL or {DEFAULT_MODEL})")
    ask.add_argument("--max-new-tokens", type=positive_int, default=256, help="longest answer in tokens (default: 256)")
    ask.add_argument("--system", help="system prompt")
    who = ask.add_mutually_exclusive_group()
    who.add_argument("--agent", help="answer with this agent's live adapter stack (the base model until it has one)")
    who.add_argument("--adapter", action="append", metavar="SKILL[@vN]",
                     help="answer with these adapters (repeatable; default version: live, else newest)")
    ask.add_argument("--json", action="store_true", help="print one JSON object with answer, timing and token counts")
    ask.set_defaults(handler=cmd_ask)
