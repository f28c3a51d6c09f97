"""CLI for the adapter registry: adapters, stacks, deploy, rollback, remove-skill, deployments.

Deploying and rolling back validate every adapter in the stack, and the
weighted stack as a whole, against the base model first (exit 3 when rejected,
with the reason; nothing changes); a running agent process picks the new
deployment up within a second and hot-swaps it. ``stacks merge`` validates the
merged adapter before registering it. ``adapters approve`` lifts a rejection
(not an integrity failure); ``adapters retire`` takes a version out of use.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent_sleep.cli.common import (
    add_json_flag,
    agent_hint,
    fraction,
    iso_utc,
    positive_float,
    positive_int,
    print_json,
    settings_from,
    time_text,
    weight_pair,
)
from agent_sleep.errors import ConfigError

EXIT_REJECTED = 3


def _registry(args: argparse.Namespace) -> Any:
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

    return AdapterRegistry(ExperienceStore(settings=settings_from(args)))


def _describe(stack: Any) -> str:
    """A stack's items as ``skill@vN×weight, …`` (empty string for the base model)."""
    return ", ".join(f"{i.adapter}×{i.weight:g}" for i in stack.items)


def cmd_adapters_list(args: argparse.Namespace) -> int:
    rows = _registry(args).adapters(skill=args.skill, status=args.status)
    if args.json:
        for r in rows:
            print_json(r)
        return 0
    if not rows:
        print("no adapters match" if args.skill or args.status else "no adapters registered")
        return 0
    print(f"{'ADAPTER':28} {'STATUS':11} {'GEN':7} {'RANK':>4}  {'CREATED (UTC)':16}  ALIASES")
    for r in rows:
        print(f"{r.name:28} {r.status:11} {r.generator:7} {r.rank:>4}  {r.created_at:%Y-%m-%d %H:%M}  "
              f"{','.join(r.aliases)}")
    return 0


def cmd_adapters_show(args: argparse.Namespace) -> int:
    r = _registry(args).get(args.ref)
    if args.json:
        print_json(r)
        return 0
    for key, value in r.model_dump(mode="json").items():
        print(f"{key:16} {iso_utc(r.created_at) if key == 'created_at' else value}")
    return 0


def cmd_adapters_lineage(args: argparse.Namespace) -> int:
    """Always JSON (``--json`` is accepted so every data command takes it)."""
    from agent_sleep.registry.records import AdapterVersionRecord

    lineage = _registry(args).lineage(args.ref)
    lineage["adapter"] = AdapterVersionRecord.model_validate(lineage["adapter"])  # its times print like all others
    for entry in [*lineage.get("status_history", []), *lineage["deployments"]]:
        entry["at"] = time_text(entry["at"])
    print_json(lineage)
    return 0


def _print_status(rec: Any, as_json: bool) -> int:
    if as_json:
        print_json(rec)
    else:
        print(f"{rec.name} is {rec.status}" + (f": {rec.status_reason}" if rec.status_reason else ""))
    return 0


def cmd_adapters_approve(args: argparse.Namespace) -> int:
    rec = _registry(args).approve(args.ref, actor=args.actor, reason=args.reason or "")
    return _print_status(rec, args.json)


def cmd_adapters_retire(args: argparse.Namespace) -> int:
    rec = _registry(args).retire(args.ref, actor=args.actor, reason=args.reason or "")
    return _print_status(rec, args.json)


def cmd_adapters_add(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent_sleep.adapters.artifact import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, adopt_peft_folder

    folder, manifest = Path(args.folder), None
    peft_files = (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).exists()
    if peft_files and not (folder / MANIFEST_FILE).exists() and not (folder / MANIFEST_FILE).is_symlink():
        # A plain PEFT folder (save_pretrained): check it against the base model, then adopt it with a manifest.
        from agent_sleep.models.loader import load_base_model

        settings = settings_from(args)
        handle = load_base_model(args.model or settings.model, settings=settings, device="cpu")
        manifest = adopt_peft_folder(folder, handle, description=args.description)
    rec = _registry(args).register(folder, args.skill, description=args.description, agent=args.agent,
                                   manifest=manifest)  # fmt: skip
    if args.json:
        print_json({**rec.model_dump(), "imported": manifest is not None})
    else:
        print(rec.name)
    return 0


def cmd_stacks_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    stacks = reg.stacks(args.agent)
    if args.json:
        for st in stacks:
            print_json(st)
        return 0
    if not stacks:
        print(f"no stacks for agent {args.agent!r}{agent_hint(reg.store, args.agent)}" if args.agent
              else "no stacks yet")
        return 0
    for st in stacks:
        items = _describe(st) or "(empty: base model)"
        print(f"{st.name:32} {st.created_at:%Y-%m-%d %H:%M}  {items}")
    return 0


def cmd_stacks_show(args: argparse.Namespace) -> int:
    """Always JSON (``--json`` is accepted so every data command takes it)."""
    print_json(_registry(args).get_stack(args.ref))
    return 0


def _parse_weights(pairs: list[str] | None) -> dict[str, float]:
    """``--weight SKILL=W`` pairs; each weight must be one a stack may use (finite, 0 < |W| <= 4)."""
    from agent_sleep.adapters.stack import check_weight
    from agent_sleep.errors import InvalidInputError

    weights: dict[str, float] = {}
    for pair in pairs or []:
        skill, sep, value = pair.partition("=")
        if not sep or not skill:
            raise ConfigError(f"--weight expects SKILL=NUMBER, got {pair!r}")
        try:
            weights[skill] = check_weight(value.strip(), skill)
        except InvalidInputError as exc:
            raise ConfigError(f"--weight {pair}: {exc}") from None
    return weights


def _print_outcome(outcome: Any, as_json: bool) -> int:
    if as_json:
        print_json(outcome)
    elif outcome.status == "rejected":
        print(f"rejected: {outcome.reason}")
    else:
        d = outcome.deployment
        items = _describe(d.stack) or "base model"
        print(f"{d.kind} #{d.seq}: {d.stack.name} is live for {d.agent} ({items})")
    return EXIT_REJECTED if outcome.status == "rejected" else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from agent_sleep.registry.refs import is_stack_ref, parse_adapter_ref
    from agent_sleep.runtime.deploy import deploy_validated

    weights = _parse_weights(args.weight)
    if len(args.targets) == 1 and is_stack_ref(args.targets[0]):
        if weights:
            raise ConfigError("--weight applies to adapters; a stack already holds its weights")
        targets: Any = args.targets[0]
    else:
        refs = [parse_adapter_ref(t) for t in args.targets]
        unknown = sorted(set(weights) - {r.skill for r in refs})
        if unknown:
            raise ConfigError(f"--weight names {', '.join(unknown)}, which is not among the adapters deployed")
        targets = [(ref, weights.get(ref.skill, 1.0)) for ref in refs]
    _check_bound(args.max_delta_norm)
    outcome = deploy_validated(_registry(args), args.agent, targets, actor=args.actor, reason=args.reason or "",
                               validate=not args.no_validate, max_delta_norm=args.max_delta_norm)
    return _print_outcome(outcome, args.json)


def _check_bound(value: float | None) -> None:
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--max-delta-norm must be a positive number, got {value!r}")


def cmd_rollback(args: argparse.Namespace) -> int:
    from agent_sleep.runtime.deploy import rollback_validated

    _check_bound(args.max_delta_norm)
    outcome = rollback_validated(_registry(args), args.agent, to=args.to, actor=args.actor,
                                 reason=args.reason or "rollback", validate=not args.no_validate,
                                 max_delta_norm=args.max_delta_norm)
    return _print_outcome(outcome, args.json)


def cmd_remove_skill(args: argparse.Namespace) -> int:
    from agent_sleep.runtime.deploy import DeployOutcome

    dep = _registry(args).remove_skill(args.agent, args.skill, actor=args.actor, reason=args.reason or "")
    return _print_outcome(DeployOutcome(status="deployed", deployment=dep), args.json)


def cmd_deployments(args: argparse.Namespace) -> int:
    """The history, oldest first; a guard rollback also shows the numbers its check recorded (``detail``)."""
    from agent_sleep.cli.guard_cmds import deployment_detail_lines

    reg = _registry(args)
    deps = reg.deployments(args.agent)
    if args.json:
        for d in deps:
            print_json(d)
        return 0
    if not deps:
        print(f"no deployments for agent {args.agent!r}{agent_hint(reg.store, args.agent)}")
        return 0
    for d in deps:
        items = _describe(d.stack) or "base model"
        print(f"#{d.seq:<3} {d.created_at:%Y-%m-%d %H:%M:%S}  {d.kind:12} {d.stack.name:28} by {d.actor}: "
              f"{d.reason}  [{items}]  id={d.id}")
        for line in deployment_detail_lines(d.detail):
            print(f"     {line}")
    return 0


_ADAPTER_STATUSES = ["candidate", "approved", "live", "retired", "rejected", "rolled_back"]


def _deploy_slow(args: argparse.Namespace) -> str | None:
    return None if args.no_validate else "validating the stack against the base model"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ad = sub.add_parser("adapters", help="list, show, trace, add, approve and retire registered adapter versions")
    ad_sub = ad.add_subparsers(dest="adapters_command", metavar="ACTION", required=True, title="actions")
    p = ad_sub.add_parser("list", help="list adapter versions")
    p.add_argument("--skill", help="only this skill's versions")
    p.add_argument("--status", choices=_ADAPTER_STATUSES, help="only versions in this state")
    add_json_flag(p, "one JSON object per version and line")
    p.set_defaults(handler=cmd_adapters_list)
    p = ad_sub.add_parser("show", help="show one version (skill@vN, skill@live, or skill)")
    p.add_argument("ref", help="skill@vN, skill@live or skill (its live, else newest, version)")
    add_json_flag(p, "print the version as one JSON object")
    p.set_defaults(handler=cmd_adapters_show)
    p = ad_sub.add_parser("lineage", help="where a version came from and where it was deployed (JSON)")
    p.add_argument("ref", help="skill@vN, skill@live or skill")
    add_json_flag(p, "the output is always one JSON object; accepted for uniformity")
    p.set_defaults(handler=cmd_adapters_lineage)
    for action, handler, text in (
        ("approve", cmd_adapters_approve, "approve a version (lifts a rejection; deploys still validate)"),
        ("retire", cmd_adapters_retire, "take a version that is not live out of use"),
    ):
        p = ad_sub.add_parser(action, help=text)
        p.add_argument("ref", metavar="SKILL@vN", help="the version")
        p.add_argument("--reason", help="why, kept in the version's history")
        p.add_argument("--actor", default="cli", help="who, kept in the version's history (default: cli)")
        add_json_flag(p, "print the version as one JSON object")
        p.set_defaults(handler=handler)
    p = ad_sub.add_parser("add", help="register an adapter folder (with manifest.json, or a plain PEFT "
                                     "save_pretrained folder) as the next version of a skill")
    p.add_argument("folder", help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--skill", required=True, help="skill name to register the folder under (next version)")
    p.add_argument("--description", help="what the adapter is for")
    p.add_argument("--agent", help="the agent the skill belongs to")
    p.add_argument("--model", help="base model a plain PEFT folder (no manifest.json) is checked against and "
                   "recorded for (default: $AGENT_SLEEP_MODEL or smollm2-135m-instruct)")
    add_json_flag(p, "print the registered version as JSON")
    p.set_defaults(handler=cmd_adapters_add)

    st = sub.add_parser("stacks", help="list, show and merge adapter stacks")
    st_sub = st.add_subparsers(dest="stacks_command", metavar="ACTION", required=True, title="actions")
    p = st_sub.add_parser("list", help="list stacks")
    p.add_argument("--agent", help="only this agent's stacks")
    add_json_flag(p, "one JSON object per stack and line")
    p.set_defaults(handler=cmd_stacks_list)
    p = st_sub.add_parser("show", help="show one stack (agent:stack@vN) as JSON")
    p.add_argument("ref", help="agent:stack@vN")
    add_json_flag(p, "the output is always one JSON object; accepted for uniformity")
    p.set_defaults(handler=cmd_stacks_show)
    register_merge(st_sub)

    def _common(p: argparse.ArgumentParser, agent: bool = True) -> None:
        if agent:
            p.add_argument("--agent", required=True, help="the agent whose live stack changes")
        p.add_argument("--reason", help="why, kept in the deployment history")
        p.add_argument("--actor", default="cli", help="who, kept in the deployment history (default: cli)")
        add_json_flag(p, "print the outcome (status, reason, deployment) as one JSON object")

    def _validation(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-validate", action="store_true",
                       help="skip the checks against the base model (a rejected version is still refused)")
        p.add_argument("--max-delta-norm", type=positive_float, metavar="RATIO",
                       help="largest allowed ||ΔW||/||W|| of any layer, per adapter and for the weighted stack "
                            "(default 1.0)")

    p = sub.add_parser("deploy", help="validate and make a stack (or skill@vN ...) live for an agent",
                       description="Validate a stack against the base model and make it live for an agent; a "
                       "running runtime hot-swaps it within a second. Exit 3 when validation rejects it.")
    p.add_argument("targets", nargs="+", metavar="STACK|SKILL@vN", help="a stack name, or one or more adapters")
    p.add_argument("--weight", action="append", type=weight_pair, metavar="SKILL=W",
                   help="per-skill weight (repeatable; default 1; finite, 0 < |W| <= 4)")
    _validation(p)
    _common(p)
    p.set_defaults(handler=cmd_deploy, slow=_deploy_slow)
    p = sub.add_parser("rollback", help="validate and make the previous (or a given) deployment's stack live again")
    p.add_argument("--to", metavar="DEPLOYMENT", help="deployment id or sequence number")
    _validation(p)
    _common(p)
    p.set_defaults(handler=cmd_rollback, slow=_deploy_slow)
    p = sub.add_parser("remove-skill", help="deploy the live stack without one skill")
    p.add_argument("skill", help="the skill to take out of the agent's live stack")
    _common(p)
    p.set_defaults(handler=cmd_remove_skill)
    p = sub.add_parser("deployments", help="an agent's deployment history")
    p.add_argument("--agent", required=True, help="the agent")
    add_json_flag(p, "one JSON object per deployment and line")
    p.set_defaults(handler=cmd_deployments)


def cmd_stacks_merge(args: argparse.Namespace) -> int:
    """Materialise a stack into one adapter (exact rank-cat, or lossy linear/TIES) and register it."""
    import tempfile
    from pathlib import Path

    from agent_sleep.adapters.artifact import AdapterManifest, lora_layers, read_adapter, write_adapter
    from agent_sleep.adapters.merge import materialize_cat, merge_linear, merge_ties

    from agent_sleep.adapters.stack import check_weight
    from agent_sleep.errors import InvalidInputError

    reg = _registry(args)
    stack = reg.get_stack(args.stack)
    if not stack.items:
        raise ConfigError(f"stack {stack.name} is empty; nothing to merge")
    _check_bound(args.max_delta_norm)
    records = [reg.get(i.adapter) for i in stack.items]
    hashes = {r.base_model_hash for r in records}
    if len(hashes) != 1:
        raise ConfigError(f"stack {stack.name} mixes adapters for different base models")
    rejected = [f"{r.name} ({r.status_reason})" for r in records if r.status == "rejected"]
    if rejected:
        raise ConfigError(f"stack {stack.name} holds rejected versions: {', '.join(rejected)}")
    try:
        weights = [check_weight(i.weight, i.adapter) for i in stack.items]  # stacks made before weights were checked
    except InvalidInputError as exc:
        raise ConfigError(f"stack {stack.name}: {exc}") from None
    items = [(r.name, lora_layers(read_adapter(r.path)), w) for r, w in zip(records, weights, strict=True)]
    if args.method == "cat":
        tensors, config = materialize_cat(items)
    elif args.method == "linear":
        tensors, config = merge_linear(items, args.rank or max(r.rank for r in records))
    else:
        tensors, config = merge_ties(items, args.rank or max(r.rank for r in records), density=args.density)
    manifest = AdapterManifest(
        generator={"name": "merged", "version": args.method},
        base_model={"id": records[0].base_model_id, "content_hash": records[0].base_model_hash},
        sources={"description": f"{args.method} merge of {stack.name}: "
                                + _describe(stack),
                 "episodes": sorted({e for r in records for e in r.sources.get("episodes", [])}),
                 "documents": sorted({d for r in records for d in r.sources.get("documents", [])})},
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_adapter(Path(tmp) / "merged", tensors, config, manifest)
        if not args.no_validate:
            # The merge is what will run: check it as one adapter, under the bound a deploy would use.
            from agent_sleep.adapters.validation import DEFAULT_MAX_DELTA_NORM, validate_adapter
            from agent_sleep.models.loader import load_base_model

            settings = reg.store.settings
            report = validate_adapter(read_adapter(folder), load_base_model(settings.model, settings=settings),
                                      max_delta_norm=args.max_delta_norm or DEFAULT_MAX_DELTA_NORM)
            if not report.ok:
                if args.json:
                    print_json({"status": "rejected", "reason": report.reason, **report.to_dict()})
                else:
                    print(f"rejected: the {args.method} merge of {stack.name}: {report.reason}; nothing registered")
                return EXIT_REJECTED
        rec = reg.register(folder, args.name, description=manifest.sources.description, agent=stack.agent)
    if args.json:
        print_json(rec)
    else:
        print(f"{rec.name}  rank {rec.rank}  {rec.path}")
    return 0


def register_merge(stacks_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = stacks_sub.add_parser("merge", help="materialise a stack into one registered adapter (for one-adapter servers)")
    p.add_argument("stack", help="agent:stack@vN")
    p.add_argument("--name", required=True, help="skill name of the merged adapter")
    p.add_argument("--method", choices=["cat", "linear", "ties"], default="cat",
                   help="cat: exact, rank = sum of ranks (default); linear/ties: lossy, rank --rank")
    p.add_argument("--rank", type=positive_int, help="rank of a linear/ties merge (default: the largest input rank)")
    p.add_argument("--density", type=fraction, default=0.2, help="TIES: fraction of each delta kept (default 0.2)")
    p.add_argument("--no-validate", action="store_true",
                   help="register the merge without checking it on the base model")
    p.add_argument("--max-delta-norm", type=positive_float, metavar="RATIO",
                   help="largest allowed ||ΔW||/||W|| of any layer of the merge (default 1.0); exit 3 above it")
    add_json_flag(p, "print the registered version (or the rejection) as JSON")
    p.set_defaults(handler=cmd_stacks_merge,
                   slow=lambda a: "merging the stack" + ("" if a.no_validate else " and validating the merge"))
