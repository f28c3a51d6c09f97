"""CLI for skills from descriptions: ``agent-sleep skill create "DESCRIPTION" --name NAME`` (Text-to-LoRA).

Turns a one-line description of a behaviour (an answer format, a tone, a short procedure) into a LoRA adapter
with the T2L hypernetwork, in one forward pass, and registers it as the next version of skill NAME (a
candidate). The skill then works like any other: ``agent-sleep ask --adapter NAME`` and
``agent-sleep deploy NAME@vN --agent A``.

The description is checked before any model loads: an empty or whitespace-only one, one over 1,000 characters
and one with control characters exit 1 with the problem named, and nothing is registered. So does any failure
of the generator (no checkpoint, a checkpoint for another base model, non-finite weights).

Creating a skill again from the same description, hypernetwork and base model registers nothing new: that
version is reported, with ``"reused": true`` in ``--json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent_sleep.cli.common import add_json_flag, print_adapter_next_steps, print_json, settings_from
from agent_sleep.errors import ModelNotFoundError


def _load_generator(args: argparse.Namespace, settings: Any) -> Any:
    from agent_sleep.generators.t2l import DEFAULT_CHECKPOINT, T2LGenerator
    from agent_sleep.generators.t2l_net import T2L_FORMAT
    from agent_sleep.models.loader import load_base_model

    if args.checkpoint is None and not (DEFAULT_CHECKPOINT / T2L_FORMAT.config_file).is_file():
        raise ModelNotFoundError(
            f"no trained T2L checkpoint at {DEFAULT_CHECKPOINT}; train one with pipelines/t2l/meta_train.py "
            "(see its config for the command) or pass --checkpoint DIR"
        )
    # The model the agent runs (what ask/deploy use), so a checkpoint trained for other weights is refused.
    handle = load_base_model(args.model or settings.model, settings=settings)
    return T2LGenerator.load(args.checkpoint, handle=handle, settings=settings)


def cmd_skill_create(args: argparse.Namespace) -> int:
    from agent_sleep.adapters.manifest import check_name
    from agent_sleep.generators.t2l import create_skill, normalize_description
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

    settings = settings_from(args)
    check_name(args.name)
    description = normalize_description(args.description)
    generator = _load_generator(args, settings)
    store = ExperienceStore(settings=settings)
    try:  # the adapter is made (or found) before anything is registered
        record, adapter = create_skill(AdapterRegistry(store), description, args.name, generator=generator,
                                       agent=args.agent)  # fmt: skip
    finally:
        store.close()
    adapter_bytes = sum(f.stat().st_size for f in Path(record.path).glob("*.safetensors"))
    out = {
        "name": record.skill,
        "version": record.version,
        "adapter": record.name,
        "path": record.path,
        "reused": adapter.reused,
        "seconds": round(adapter.seconds, 4),
        "rank": adapter.rank,
        "description": adapter.description,
        "adapter_bytes": adapter_bytes,
        "generator": f"t2l/{generator.version}",
        "base_model_hash": record.base_model_hash,
        "agent": args.agent,
    }
    if args.json:
        print_json(out)
        return 0
    if adapter.reused:
        print(f"unchanged: {record.name} was made from this description before with this hypernetwork; nothing new "
              "registered")  # fmt: skip
    else:
        print(f"created skill {record.name} from its description in {adapter.seconds:.2f} s")
    print_adapter_next_steps(record, adapter.rank, adapter_bytes, args.agent, "a question")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    skill = sub.add_parser("skill", help="create skills from a description (Text-to-LoRA)")
    skill_sub = skill.add_subparsers(dest="skill_command", metavar="ACTION", required=True, title="actions")
    create = skill_sub.add_parser(
        "create",
        help="turn a one-line description into a LoRA adapter and register it as a skill",
        description="Generate a LoRA adapter from a description of a behaviour (an answer format, a tone, a "
        "procedure) with the T2L hypernetwork, in one forward pass, and register it as the next version of "
        "skill NAME (usable with ask --adapter and deploy).",
    )
    create.add_argument("description", metavar="DESCRIPTION",
                        help="what the skill should do, in a sentence (e.g. \"Answer in JSON with the key "
                        "'answer'.\"); at most 1,000 characters")  # fmt: skip
    create.add_argument("--name", required=True, help="skill name to register the adapter under (next version; the "
                        "same description again reuses its version)")
    create.add_argument("--agent", help="the agent that owns the skill (deploy it with deploy --agent)")
    create.add_argument("--checkpoint", metavar="DIR", help="T2L hypernetwork checkpoint (default: the bundled one)")
    create.add_argument("--model", help="base model (default: $AGENT_SLEEP_MODEL or smollm2-135m-instruct)")
    add_json_flag(create, "print one JSON object (name, version, adapter, path, seconds, rank, ...)")
    create.set_defaults(handler=cmd_skill_create, slow=lambda a: f"creating skill {a.name} from its description")


__all__ = ["cmd_skill_create", "register"]
