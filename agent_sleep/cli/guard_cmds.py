"""CLI for the online guard: ``guard check`` judges an agent's live deployment now; ``guard history`` lists checks.

``agent-sleep guard check --agent A [--config FILE] [--json] [--dry-run]`` makes one check (see
:mod:`agent_sleep.guard`): with the guard enabled in the config and a significant drop it rolls the
deployment back; disabled (the default) it says what it would do. Every check but a dry run is
appended to the agent's journal, which ``guard history`` reads. Exit 0 whatever the verdict (the
verdict is data: ``--json`` prints it); 1 when a deploy replaced the checked deployment first
(nothing was rolled back) or the check could not be made.
"""

from __future__ import annotations

import argparse
from typing import Any

from agent_sleep.cli.common import add_json_flag, positive_int, print_json, settings_from, time_text


def _registry(args: argparse.Namespace) -> Any:
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore

    return AdapterRegistry(ExperienceStore(settings=settings_from(args)))


def signal_lines(signals: list[dict[str, Any]] | tuple[Any, ...]) -> list[str]:
    """One line per signal of a check (records or their JSON), e.g. ``score  0.752 -> 0.448  n 50/50 ...``."""
    lines = []
    for raw in signals:
        t = raw if isinstance(raw, dict) else raw.model_dump()
        pct = t["signal"] == "success"

        def fmt(v: float | None, pct: bool = pct) -> str:
            return "-" if v is None else (f"{v:.0%}" if pct else f"{v:.3f}")

        line = f"{t['signal']:8} {fmt(t['mean_before'])} -> {fmt(t['mean_after'])}  n {t['n_before']}/{t['n_after']}"
        if t.get("p_value") is not None:
            stat = "-" if t["statistic"] is None else f"{t['statistic']:.2f}"
            line += f"  {'t' if t['test'] == 'welch_t' else 'z'} {stat}  p {t['p_value']:.2g}  alpha {t['alpha']:.3g}"
        lines.append(f"{line}  {t['outcome']}")
    return lines


_ACTIONS = {
    "none": None,
    "rolled_back": "rolled back",
    "disabled": "the guard is disabled: nothing rolled back (enabled: true in the config turns rollbacks on)",
    "dry_run": "dry run: nothing rolled back or recorded",
}


def cmd_guard_check(args: argparse.Namespace) -> int:
    from agent_sleep.guard import enforce, load_guard_config

    config = load_guard_config(args.config)
    outcome = enforce(_registry(args), args.agent, config, dry_run=args.dry_run)
    if args.json:
        print_json(outcome)
        return 0
    c = outcome.check
    if c.deployment_seq is None:
        print(f"{c.agent}: {c.decision}: {c.reason}")
        return 0
    was = c.previous_stack or "the base model"
    print(f"{c.agent} #{c.deployment_seq} {c.stack} (was {was}): {c.decision}: {c.reason}")
    for line in signal_lines(c.signals):
        print(f"  {line}")
    if outcome.rollback is not None:
        r = outcome.rollback
        print(f"  rolled back: rollback #{r.seq} makes {r.stack.name} live again (id={r.id})")
    elif c.decision == "rollback" and _ACTIONS.get(outcome.action):
        print(f"  {_ACTIONS[outcome.action]}")
    return 0


def cmd_guard_history(args: argparse.Namespace) -> int:
    from agent_sleep.guard import journal_path, read_journal

    settings = settings_from(args)
    records, skipped = read_journal(journal_path(settings.data_dir, args.agent), limit=args.limit)
    if args.json:
        for r in records:
            print_json({**r, "at": time_text(r.get("at")), "check": _check_of(r.get("check"))})
        return 0
    if not records:
        print(f"no guard checks recorded for agent {args.agent!r} in {settings.data_dir}")
    for r in records:
        c = r.get("check", {})
        seq = c.get("deployment_seq")
        print(f"{time_text(r.get('at'))}  #{seq if seq is not None else '-'} {c.get('stack') or '-':24} "
              f"{c.get('decision', '?'):17} {r.get('action', '?'):11} {c.get('reason', '')}"
              + (f"  error: {r['error']}" if r.get("error") else ""))
    if skipped:
        print(f"({skipped} unreadable line(s) skipped: a write was cut short)")
    return 0


def _check_of(raw: Any) -> Any:
    """A journaled check as a record (its times then print like every other), or as written if it is not one."""
    from pydantic import ValidationError

    from agent_sleep.guard import GuardCheck

    try:
        return GuardCheck.model_validate(raw)
    except ValidationError:
        return raw


def deployment_detail_lines(detail: dict[str, Any] | None) -> list[str]:
    """The numbers a guard rollback's deployment carries, one line per signal ([] for other deployments)."""
    from agent_sleep.guard import DETAIL_KEY

    check = (detail or {}).get(DETAIL_KEY)
    if not isinstance(check, dict):
        return []
    head = (f"online guard checked #{check.get('deployment_seq')} {check.get('stack')} at "
            f"{time_text(check.get('checked_at'))} against {check.get('previous_stack') or 'the base model'}")
    return [head, *signal_lines(check.get("signals") or [])]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser("guard", help="the online guard: judge a live deployment on feedback, roll back on a drop",
                       description="Compare an agent's feedback scores and outcomes since its live deployment with "
                       "the stack before it (one-sided Welch t test and two-proportion z test), and roll back on a "
                       "significant drop when the guard is enabled in the config.")
    g_sub = g.add_subparsers(dest="guard_command", metavar="ACTION", required=True, title="actions")
    p = g_sub.add_parser("check", help="check an agent's live deployment now (rolls back only when enabled)")
    p.add_argument("--agent", required=True, help="the agent")
    p.add_argument("--config", metavar="FILE", help="online guard config (YAML; default: all defaults, disabled)")
    p.add_argument("--dry-run", action="store_true", help="only report the verdict: roll back and record nothing")
    add_json_flag(p, "print the check and what was done as one JSON object")
    p.set_defaults(handler=cmd_guard_check)
    p = g_sub.add_parser("history", help="the checks recorded for an agent (this host's journal)")
    p.add_argument("--agent", required=True, help="the agent")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the newest N checks")
    add_json_flag(p, "one JSON object per check and line")
    p.set_defaults(handler=cmd_guard_history)
