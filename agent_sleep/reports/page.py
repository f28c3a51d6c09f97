"""The report as one self-contained HTML page: plots as ``data:`` images, tables, no script, nothing fetched.

A Content-Security-Policy in the page allows images from ``data:`` and the inline style only, so even a
browser that would follow a link somewhere cannot load anything at view time. Every string from the
database goes through :func:`html.escape` (names too: the page never relies on the name alphabet).
The numbers are written by :mod:`.text`, like the Markdown's; a section without data says so in words
instead of showing an empty plot, and a report with no history at all is one short page saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape

from agent_sleep.reports import text
from agent_sleep.reports.markdown import STAGE_ORDER, empty_message, summary_line
from agent_sleep.reports.model import AgentReport, Report
from agent_sleep.reports.plots import Plot, agent_plots

__all__ = ["render_html"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#f6f7f9}
header{background:#24292f;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d1d9;font-size:13px}main{padding:8px 28px 40px;max-width:1200px}
nav{margin:12px 0}nav a{margin-right:14px}
section.agent{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px 22px 18px;margin:18px 0}
h2{font-size:20px;margin:14px 0 6px}h3{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #eaecef;
padding-bottom:3px}
.summary{color:#444;margin:0 0 8px}figure{margin:8px 0 12px}figure img{display:block;width:100%;max-width:1000px;
height:auto}figcaption{color:#57606a;font-size:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}th,td{border:1px solid #d0d7de;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f0f2f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.rollback td{background:#fdecea;font-weight:600}tr.failed td{color:#b42318}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.none{color:#57606a;font-style:italic}details{margin:4px 0 10px}summary{cursor:pointer;color:#0969da}
.empty{background:#fff;border:1px dashed #8c959f;border-radius:8px;padding:28px;margin:28px 0;text-align:center}
.empty h2{margin-top:0}
"""
SECTIONS = (
    ("runs", "Runs over time", "No consolidation runs yet."),
    ("skills", "Target metric per skill", "No skill has been through the gate yet."),
    ("gate", "Gate deltas", "No gate decisions yet."),
    ("guards", "Guard-suite scores over time", "No guard scores yet."),
    ("timeline", "Deployment timeline", "No deployments yet: the agent runs on the base model."),
    ("selection", "Selection statistics", "No selection decisions recorded."),
)


def _c(value: object) -> str:
    return f"<code>{escape(str(value))}</code>"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], *, num: Iterable[int] = (),
           row_class: Sequence[str] | None = None) -> str:  # fmt: skip
    """A table from cells that are already HTML (each caller escapes what it puts in)."""
    nums = set(num)
    out = ["<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if j in nums else f"<td>{c}</td>" for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    return "".join(out) + "</tbody></table>"


def _figure(plot: Plot) -> str:
    return (f'<figure><img class="plot" data-plot="{escape(plot.key)}" alt="{escape(plot.alt)}" '
            f'src="{plot.data_uri}"><figcaption>{escape(plot.alt)}</figcaption></figure>')  # fmt: skip


def _folded(label: str, body: str, n: int, threshold: int = 12) -> str:
    """Long tables fold away under the plot that already shows them."""
    return body if n <= threshold else f"<details><summary>{escape(label)} ({n} rows)</summary>{body}</details>"


def _runs_table(agent: AgentReport) -> str:
    rows = []
    for r in agent.runs:
        by = {st.stage: st for st in r.stages}
        rows.append([str(r.cycle), _c(r.run_id[:12]), escape(text.when(r.started_at)),
                     escape(r.outcome or f"running ({r.status})"),
                     *(escape(text.seconds(by[s].seconds)) if s in by else "-" for s in STAGE_ORDER),
                     escape(text.seconds(r.seconds)), _c(r.deployed_stack) if r.deployed_stack else "-"])  # fmt: skip
    body = _table(["cycle", "run", "started (UTC)", "outcome", *(f"{s} s" for s in STAGE_ORDER), "total s", "deployed"],
                  rows, num=(0, 4, 5, 6, 7, 8))  # fmt: skip
    errors = "".join(f"<li>cycle {r.cycle}: {escape(r.error)}</li>" for r in agent.runs if r.error)
    return _folded("all runs", body, len(rows)) + (f'<ul class="errors">{errors}</ul>' if errors else "")


def _skills_table(agent: AgentReport) -> str:
    parts = []
    for s in agent.skills:
        rows = [[str(p.cycle), _c(p.adapter or "-"), escape(p.verdict), str(p.n), text.accuracy(p.baseline),
                 text.accuracy(p.candidate), text.delta(p.delta), escape(text.ci(p.ci_low, p.ci_high))]
                for p in s.points]  # fmt: skip
        body = _table(["cycle", "adapter", "verdict", "n", "baseline", "candidate", "change", "95% CI"], rows,
                      num=(0, 3, 4, 5, 6))  # fmt: skip
        parts.append(f"<h4>{_c(s.skill)}</h4>" + _folded(f"{s.skill}: every cycle", body, len(rows)))
    return "".join(parts)


def _gate_table(agent: AgentReport) -> str:
    rows, classes = [], []
    for g in agent.gate:
        rows.append([str(g.cycle), _c(g.skill), _c(g.suite), escape(g.role), str(g.n), text.accuracy(g.baseline),
                     text.accuracy(g.candidate), text.delta(g.delta), escape(text.ci(g.ci_low, g.ci_high)),
                     "yes" if g.passed else "no"])  # fmt: skip
        classes.append("" if g.passed else "failed")
    body = _table(["cycle", "skill", "suite", "role", "n", "baseline", "candidate", "change", "95% CI", "passed"], rows,
                  num=(0, 4, 5, 6, 7), row_class=classes)  # fmt: skip
    return _folded("every comparison", body, len(rows))


def _guards_table(agent: AgentReport) -> str:
    rows = [[str(g.cycle), _c(g.suite), _c(g.stack),
             "live" if g.stack_role == "live" else f"candidate ({escape(g.verdict or '-')})", str(g.n),
             text.accuracy(g.accuracy)] for g in agent.guards]  # fmt: skip
    return _folded("every guard score",
                   _table(["cycle", "suite", "stack", "scored as", "n", "accuracy"], rows, num=(0, 4, 5)), len(rows))


def _deployments_table(agent: AgentReport) -> str:
    rows, classes = [], []
    for d in agent.deployments:
        run = f"cycle {d.cycle}" if d.cycle else _c(d.run_id[:12]) if d.run_id else "-"
        detail = _c(json.dumps(d.detail, sort_keys=True)) if d.detail else "-"
        rows.append([str(d.seq), escape(text.when(d.at)), escape(d.kind), _c(d.stack),
                     " + ".join(_c(a) for a in d.adapters) or "base model", escape(d.actor), escape(d.reason), run,
                     detail])  # fmt: skip
        classes.append("rollback" if d.rollback else "")
    body = _table(["#", "time (UTC)", "kind", "stack", "adapters", "actor", "reason", "run", "detail"], rows, num=(0,),
                  row_class=classes)  # fmt: skip
    return _folded("every deployment", body, len(rows), threshold=30)


def _selection_table(agent: AgentReport) -> str:
    return _table(["selector", "kept", "dropped"],
                  ([_c(c.selector), str(c.kept), str(c.dropped)] for c in agent.selection), num=(1, 2))


TABLES = {"runs": _runs_table, "skills": _skills_table, "gate": _gate_table, "guards": _guards_table,
          "timeline": _deployments_table, "selection": _selection_table}  # fmt: skip


def _agent(agent: AgentReport, plots: dict[str, Plot]) -> str:
    live = _c(agent.live_stack) if agent.live_stack else "the base model"
    parts = [f'<section class="agent" id="agent-{escape(agent.agent)}"><h2>Agent {_c(agent.agent)}</h2>',
             f'<p class="summary">{escape(summary_line(agent))}; live stack: {live}</p>']  # fmt: skip
    has = {"runs": agent.runs, "skills": agent.skills, "gate": agent.gate, "guards": agent.guards,
           "timeline": agent.deployments, "selection": agent.selection}  # fmt: skip
    for key, title, none in SECTIONS:
        parts.append(f'<h3 id="{escape(agent.agent)}-{key}">{escape(title)}</h3>')
        if not has[key]:
            parts.append(f'<p class="none">{escape(none)}</p>')
            continue
        if key in plots:
            parts.append(_figure(plots[key]))
        parts.append(TABLES[key](agent))
    return "".join(parts) + "</section>"


def render_html(report: Report) -> str:
    """The whole page (see the module docstring)."""
    scope = (f"run {report.run}" if report.run else f"agent {report.agent}" if report.agent else "all agents")
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>agent-sleep report: {escape(scope)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>agent-sleep: consolidation report</h1><p>{escape(scope)} · database "
            f"{escape(report.database)} · generated {escape(text.when(report.generated_at))} UTC</p></header><main>")
    if report.empty:
        parts = empty_message(report).split("`")  # `code` spans in our own sentence
        message = "".join(_c(part) if i % 2 else escape(part) for i, part in enumerate(parts))
        return head + (f'<div class="empty" id="empty"><h2>Nothing to report yet</h2><p>{message}</p></div>'
                       "</main></body></html>\n")
    nav = ""
    if len(report.agents) > 1:
        nav = "<nav>" + "".join(f'<a href="#agent-{escape(a.agent)}">{escape(a.agent)}</a>' for a in report.agents)
        nav += "</nav>"
    body = "".join(_agent(a, {p.key: p for p in agent_plots(a, report.generated_at)}) for a in report.agents)
    return head + nav + body + "</main></body></html>\n"
