"""CLI for consolidation runs: ``sleep`` runs one cycle now; ``runs list|show|explain`` read what runs did.

``agent-sleep sleep --agent A [--config FILE] [--resume RUN] [--json]`` selects, generates, evaluates and
deploys (see :mod:`agent_sleep.consolidation.cycle`), one progress line per step on stderr. Exit codes:
0 promoted, nothing to learn, or skipped because another run for the agent is going; 3 every candidate
was rejected (by the gate or by validation); 1 the run failed (nothing was deployed; the message says
why) or could not start. A run left unfinished (killed, or the database went away) is taken over by the
next ``sleep`` for the agent, or continued with ``--resume RUN``.

``sleep --agent A --enqueue [--config FILE]`` runs nothing: it writes a pending request for the scheduler
(``agent-sleep scheduler``, any process on the same database) and prints the request's id; the
scheduler's next run for the agent serves it, coalesced with whatever else waits.

``runs explain RUN [ITEM]`` answers "why was this episode (or document) used, or not": every selector's
decision about it in that run, and whether the run marked it consolidated.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent_sleep.cli.common import (
    UsageError,
    add_json_flag,
    agent_hint,
    iso_utc,
    positive_int,
    print_json,
    settings_from,
)
from agent_sleep.errors import NotFoundError
from agent_sleep.names import did_you_mean

EXIT_REJECTED = 3
EXIT_CODES = {"promoted": 0, "no_signal": 0, "skipped_overlap": 0, "rejected_by_gate": EXIT_REJECTED, "failed": 1}


def _store(args: argparse.Namespace) -> Any:
    from agent_sleep.store import ExperienceStore

    return ExperienceStore(settings=settings_from(args))


# ---------------------------------------------------------------- sleep


def _print_result(r: Any) -> None:
    head = f"run {r.run_id} for {r.agent}: {r.outcome}"
    if r.deployed_stack:
        head += f"; {r.deployed_stack} is live (was {r.incumbent_stack or 'the base model'})"
    print(head + (f"\n  {r.error}" if r.error else ""))
    for s in r.skills:
        target = next((c for c in s.comparisons if c.role == "target"), None)
        numbers = "; ".join(s.reasons)
        if target is not None:
            numbers = (f"target {target.baseline:.2f} -> {target.candidate:.2f} ({target.delta:+.2f}, 95% CI "
                       f"{target.ci_low:+.2f}..{target.ci_high:+.2f}, n={target.n})")
        gen = f"{s.generator} {s.generator_version or ''}".strip()
        print(f"  {s.skill:20} {gen:10} {s.adapter or '-':20} {s.status:9} {numbers}")
        if len(s.candidates) > 1:
            for c in s.candidates:
                target = next((x for x in c.comparisons if x.role == "target"), None)
                said = (f"target {target.delta:+.2f} (95% CI {target.ci_low:+.2f}..{target.ci_high:+.2f}), worst guard "
                        f"{-(c.guard_loss or 0.0):+.2f}" if target is not None else "; ".join(c.reasons))  # fmt: skip
                print(f"    {'*' if c.chosen else ' '} {c.generator:16} {c.adapter or '-':20} {c.status:9} {said}")
            print(f"    winner: {s.winner} ({s.why})" if s.winner else f"    winner: none ({s.why})")
    if r.stages:
        print("  stages   " + ", ".join(f"{name} {sec:.1f} s" for name, sec in r.stages.items()))
    if r.folder:
        print(f"  report   {r.folder}/report.md")


def cmd_sleep(args: argparse.Namespace) -> int:
    from agent_sleep.consolidation.config import load_cycle_config
    from agent_sleep.consolidation.cycle import run_cycle

    config = load_cycle_config(args.config)
    agent = args.agent or config.agent
    if agent is None:
        raise UsageError("name the agent: --agent A (or agent: in the config file)")
    if config.agent is not None and config.agent != agent:
        raise UsageError(f"--agent {agent} disagrees with the config file's agent {config.agent!r}")
    if args.enqueue and args.resume:
        raise UsageError("--enqueue asks the scheduler for the next run; it cannot --resume a given one")
    store = _store(args)
    try:
        known = store.agents()
        if agent not in known:  # a typo must not start (and record) a run for a new, empty agent
            raise NotFoundError(f"no agent named {agent!r}{did_you_mean(agent, known)} (an agent appears once it has "
                                "logged an episode)")  # fmt: skip
        if args.enqueue:
            return _enqueue(store, agent, args)
        result = run_cycle(agent, config=config, store=store, resume=args.resume,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    finally:
        store.close()
    if args.json:
        print_json(result)
    else:
        _print_result(result)
    if result.status == "running":
        return 1
    return EXIT_CODES[result.outcome]


def _enqueue(store: Any, agent: str, args: argparse.Namespace) -> int:
    import getpass
    import socket
    from pathlib import Path

    from agent_sleep.scheduling.requests import RequestStore

    config = str(Path(args.config).expanduser().resolve()) if args.config else None
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        who = socket.gethostname()
    req = RequestStore(store).enqueue(agent, source="manual", reason=f"agent-sleep sleep --enqueue by {who}",
                                      detail={"config": config} if config else None)  # fmt: skip
    if args.json:
        print_json(req)
    else:
        print(req.id)
    return 0


# ---------------------------------------------------------------- runs


def _seconds(run: Any) -> float | None:
    return (run.ended_at - run.started_at).total_seconds() if run.ended_at else None


def _listed(run: Any) -> dict[str, Any]:
    return {"id": run.id, "agent": run.agent, "status": run.status, "outcome": run.outcome, "stage": run.stage,
            "deployed_stack": run.deployed_stack, "error": run.error, "folder": run.folder,
            "owner": run.owner, "started_at": run.started_at, "ended_at": run.ended_at,
            "seconds": _seconds(run)}  # fmt: skip


def cmd_runs_list(args: argparse.Namespace) -> int:
    from agent_sleep.consolidation.runs import RunStore

    store = _store(args)
    try:
        rows = RunStore(store).runs(agent=args.agent, limit=args.limit)
        if args.json:
            for r in rows:
                print_json(_listed(r))
            return 0
        if not rows:
            print(f"no runs for agent {args.agent!r}{agent_hint(store, args.agent)}" if args.agent
                  else "no consolidation runs yet")  # fmt: skip
            return 0
    finally:
        store.close()
    print(f"{'RUN':32}  {'AGENT':14} {'OUTCOME':22} {'STARTED (UTC)':16}  {'SECONDS':>7}  {'OWNER':24} DEPLOYED")
    for r in rows:
        outcome = r.outcome or f"running ({r.stage or 'starting'})"
        seconds = f"{_seconds(r):7.1f}" if r.ended_at else f"{'-':>7}"
        owner = r.owner.rsplit(":", 1)[0] if r.owner else "-"  # host:pid of the process that ran it last
        print(f"{r.id:32}  {r.agent:14} {outcome:22} {r.started_at:%Y-%m-%d %H:%M}  {seconds}  {owner:24} "
              f"{r.deployed_stack or '-'}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from agent_sleep.consolidation.result import CycleResult
    from agent_sleep.consolidation.runs import RunStore

    store = _store(args)
    try:
        runs = RunStore(store)
        run = runs.get(args.run)
        stages = runs.stages(run.id)
    finally:
        store.close()
    if args.json:  # the summary as a value, so its times print like every other
        summary = CycleResult.model_validate(run.summary) if run.summary else {}
        print_json({"run": {**run.model_dump(exclude={"summary"}), "summary": summary},
                    "stages": list(stages.values())})
        return 0
    if run.summary:
        _print_result(CycleResult.model_validate(run.summary))
    else:
        print(f"run {run.id} for {run.agent}: {run.outcome or 'running'}" + (f"\n  {run.error}" if run.error else ""))
    ended = (f", ended {iso_utc(run.ended_at)}" if run.ended_at
             else f", still running (stage {run.stage}, owner {run.owner})")  # fmt: skip
    print(f"  started  {iso_utc(run.started_at)}{ended}")
    for name, st in stages.items():
        seconds = f"{st.seconds:.1f} s" if st.seconds is not None else "-"
        print(f"  {name:9} {st.status:8} attempt {st.attempt}  {seconds}" + (f"  {st.error}" if st.error else ""))
    return 0


def _fate(decisions: list[Any]) -> tuple[bool, str]:
    """(used, why) for one item from its decisions, in the order they were made."""
    dropped = next((d for d in decisions if not d.kept), None)
    if dropped is not None:
        return False, f"dropped by {dropped.selector}: {dropped.reason}"
    assigned = next((d for d in reversed(decisions) if d.role), None)
    if assigned is not None:
        what = {"probe": "held-out probe", "instruction": "instruction in the description"}.get(assigned.role,
                                                                                                "trained on")
        return True, f"{what} for skill {assigned.skill!r} ({assigned.selector}: {assigned.reason})"
    return True, "kept by every selector, but not assigned to a skill"


def _consolidated_by(store: Any, kind: str, item: str) -> str | None:
    if kind != "episode":
        return None
    try:
        return store.get_episode(item).consolidation_run  # type: ignore[no-any-return]
    except NotFoundError:
        return None


def cmd_runs_explain(args: argparse.Namespace) -> int:
    from agent_sleep.consolidation.runs import RunStore

    store = _store(args)
    try:
        runs = RunStore(store)
        run = runs.get(args.run)
        decisions = runs.decisions(run.id, args.item)
        if args.item is not None and not decisions:
            raise NotFoundError(f"run {run.id} made no decision about {args.item!r}: it was not a candidate (already "
                                "consolidated, unfinished, another agent's, or newer than the run)")  # fmt: skip
        by_item: dict[tuple[str, str], list[Any]] = {}
        for d in decisions:
            by_item.setdefault((d.item_kind, d.item_id), []).append(d)
        rows = []
        for (kind, item), ds in by_item.items():
            used, why = _fate(ds)
            rows.append({"run": run.id, "item_kind": kind, "item_id": item, "used": used, "why": why,
                         "consolidated_by": _consolidated_by(store, kind, item) if args.item else None,
                         "decisions": [{"selector": d.selector, "kept": d.kept, "reason": d.reason, "skill": d.skill,
                                        "role": d.role} for d in ds]})  # fmt: skip
    finally:
        store.close()
    if args.json:
        for row in rows:
            print_json(row)
        return 0
    if not rows:
        print(f"run {run.id} made no selection decisions")
        return 0
    for row in rows:
        print(f"{row['item_kind']} {row['item_id']}: {'used' if row['used'] else 'not used'}, {row['why']}")
        if args.item:
            for d in row["decisions"]:
                print(f"  {d['selector']:16} {'kept' if d['kept'] else 'dropped':8} {d['reason']}")
            by = row["consolidated_by"]
            print(f"  marked consolidated by run {by}" if by else "  not marked consolidated")
    return 0


# ---------------------------------------------------------------- parsers


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sleep", help="run one consolidation cycle now: select, generate, evaluate, deploy",
        description="Consolidate an agent's new experiences into adapters: select what is worth learning, "
        "generate an adapter per skill, gate each with lm-eval against the live stack, deploy what passes. "
        "Exit codes: 0 promoted or nothing to do, 3 rejected by the gate, 1 failed.",
    )  # fmt: skip
    p.add_argument("--agent", help="the agent to consolidate (default: the config file's agent)")
    p.add_argument("--config", metavar="FILE", help="cycle config in YAML (see pipelines/sleep/cycle.yaml)")
    p.add_argument("--resume", metavar="RUN", help="continue this unfinished run (an id or unique prefix)")
    p.add_argument("--enqueue", action="store_true",
                   help="run nothing here: queue a request for the scheduler and print its id")  # fmt: skip
    add_json_flag(p, "print the run's result (with --enqueue: the request) as one JSON object")
    p.set_defaults(handler=cmd_sleep)

    runs = sub.add_parser("runs", help="consolidation runs: list, show, explain",
                          description="What consolidation runs did, from their records in the database.")
    rsub = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True, title="commands")
    p = rsub.add_parser("list", help="list runs, newest first")
    p.add_argument("--agent", help="only this agent's runs")
    p.add_argument("--limit", type=positive_int, metavar="N", help="at most N runs")
    add_json_flag(p, "one JSON object per run")
    p.set_defaults(handler=cmd_runs_list)
    p = rsub.add_parser("show", help="one run: its skills, gate numbers and stages")
    p.add_argument("run", metavar="RUN", help="run id (or a unique prefix of at least 4 characters)")
    add_json_flag(p, "one JSON object: the run (with its summary) and its stages")
    p.set_defaults(handler=cmd_runs_show)
    p = rsub.add_parser("explain", help="why a run used, or did not use, each episode and document")
    p.add_argument("run", metavar="RUN", help="run id (or a unique prefix of at least 4 characters)")
    p.add_argument("item", metavar="ITEM", nargs="?", help="an episode or document id: its decisions in detail")
    add_json_flag(p, "one JSON object per item")
    p.set_defaults(handler=cmd_runs_explain)


__all__ = ["EXIT_CODES", "register"]
