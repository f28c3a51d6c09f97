"""CLI for reports across sleep cycles: ``agent-sleep report [--agent A] [--run RUN] [--format F] [-o FILE]``.

Reads the runs and deployments from the database (:func:`agent_sleep.reports.collect_report`) and writes
one document: Markdown by default, or the format ``-o FILE``'s suffix names, or ``--format``. Without
``-o`` it goes to stdout; with it the file is replaced atomically and one line on stderr says what was
written. An empty history is a report too (it says there is nothing yet), not an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent_sleep.cli.common import UsageError, settings_from
from agent_sleep.errors import InvalidInputError


def cmd_report(args: argparse.Namespace) -> int:
    from agent_sleep.fsutil import atomic_write_text
    from agent_sleep.reports import collect_report, format_for, render
    from agent_sleep.store import ExperienceStore

    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json and --format {args.format} disagree; give one")
    try:
        fmt = "json" if args.json else args.format or format_for(args.output)
    except InvalidInputError as exc:
        raise UsageError(str(exc)) from None
    store = ExperienceStore(settings=settings_from(args))
    try:
        report = collect_report(store, agent=args.agent, run=args.run)
    finally:
        store.close()
    out = render(report, fmt)
    if args.output is None:
        sys.stdout.write(out)
        return 0
    atomic_write_text(args.output, out)
    runs = sum(len(a.runs) for a in report.agents)
    what = "nothing to report yet" if report.empty else f"{len(report.agents)} agent(s), {runs} run(s)"
    print(f"wrote {args.output} ({fmt}, {what})", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from agent_sleep.reports.formats import FORMATS

    p = sub.add_parser(
        "report", help="a report across sleep cycles: runs, gate deltas, guard scores, deployments, selection",
        description="Report what the consolidation runs did over time, per agent: the runs (outcome, seconds per "
        "stage), each skill's target metric, the gate's deltas with their confidence intervals, guard-suite scores, "
        "the deployment timeline with rollbacks, and selection counts. HTML is one self-contained page with plots.",
    )  # fmt: skip
    p.add_argument("--agent", help="only this agent (default: every agent with runs or deployments)")
    p.add_argument("--run", metavar="RUN", help="only this run (an id or unique prefix of at least 4 characters)")
    p.add_argument("--format", choices=FORMATS, help="html, md or json (default: from -o's suffix, else md)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object (same as --format json)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE (replaced atomically)")
    p.set_defaults(handler=cmd_report, slow="building the report")


__all__ = ["register"]
