"""The report as Markdown: the model's rows as tables, per agent, numbers written by :mod:`.text`.

Names (agents, skills, adapters, stacks, runs, suites) come from a restricted alphabet and go into code
spans; free text a person or a run wrote (reasons, actors, errors, deployment details) is escaped so it
can neither break a table (``|``, line breaks) nor become HTML or a link in a Markdown viewer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from agent_sleep.reports import text
from agent_sleep.reports.model import AgentReport, Report

__all__ = ["escape", "render_markdown"]

STAGE_ORDER = ("select", "generate", "evaluate", "deploy")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # emphasis, code, links, cells


def escape(value: object) -> str:
    """Free text for one Markdown table cell: HTML-significant characters as entities, Markdown punctuation
    backslash-escaped, line breaks as spaces."""
    s = " ".join(str(value).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", s)


def word(value: object) -> str:
    """A value from a fixed vocabulary (an outcome, a verdict, a role): as it is when it is one plain word
    (an underscore inside a word is not emphasis), else escaped like any text."""
    s = str(value)
    return s if _WORD.fullmatch(s) else escape(s)


def code(value: object) -> str:
    """A name in a code span (names never hold a backtick or a pipe; anything else is escaped as text)."""
    s = str(value)
    return f"`{s}`" if s and not set(s) & set("`|\n\r") else escape(s)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    align = ["---:" if i in set(right) else "---" for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def empty_message(report: Report) -> str:
    """What an empty report says (shared with the HTML page)."""
    if report.run:
        return f"run {report.run} has nothing to report."
    scope = f"agent {report.agent!r}" if report.agent else "any agent"
    return (f"No consolidation runs or deployments for {scope} yet. A sleep cycle "
            "(`agent-sleep sleep --agent A`) or a deployment (`agent-sleep deploy`) starts the history.")  # fmt: skip


def _header(report: Report) -> list[str]:
    scope = (f"run `{report.run}`" if report.run else f"agent `{report.agent}`" if report.agent else "all agents")
    return ["# agent-sleep: consolidation report", "",
            f"- scope: {scope}", f"- database: {escape(report.database)}",
            f"- generated: {text.when(report.generated_at)} UTC", ""]  # fmt: skip


def render_markdown(report: Report) -> str:
    lines = _header(report)
    if report.empty:
        lines += ["## Nothing to report yet", "", escape_sentence(empty_message(report)), ""]
        return "\n".join(lines)
    for agent in report.agents:
        lines += _agent(agent)
    return "\n".join(lines)


def escape_sentence(sentence: str) -> str:
    """A message of ours with `code` spans kept, everything else escaped."""
    parts = sentence.split("`")
    return "".join(code(p) if i % 2 else escape(p) for i, p in enumerate(parts))


def summary_line(agent: AgentReport) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(agent.outcomes.items()))
    rollbacks = sum(d.rollback for d in agent.deployments)
    return (f"{len(agent.runs)} run(s) ({outcomes or 'none'}); {len(agent.deployments)} deployment(s), "
            f"{rollbacks} rollback(s)")  # fmt: skip


def _agent(agent: AgentReport) -> list[str]:
    lines = [f"## Agent {code(agent.agent)}", "", f"- {summary_line(agent)}",
             f"- live stack: {code(agent.live_stack) if agent.live_stack else 'the base model'}", ""]  # fmt: skip
    lines += ["### Runs", ""]
    if agent.runs:
        head = ["cycle", "run", "started (UTC)", "outcome", *(f"{s} s" for s in STAGE_ORDER), "total s", "deployed"]
        rows = []
        for r in agent.runs:
            by = {st.stage: st for st in r.stages}
            rows.append([str(r.cycle), code(r.run_id[:12]), text.when(r.started_at),
                         word(r.outcome) if r.outcome else f"running ({word(r.status)})",
                         *(text.seconds(by[s].seconds) if s in by else "-" for s in STAGE_ORDER),
                         text.seconds(r.seconds), code(r.deployed_stack) if r.deployed_stack else "-"])  # fmt: skip
        lines += _table(head, rows, right=(0, 4, 5, 6, 7, 8))
        errors = [(r.cycle, r.error) for r in agent.runs if r.error]
        lines += [f"- cycle {c}: {escape(e)}" for c, e in errors] + ([""] if errors else [])
    else:
        lines += ["No consolidation runs yet.", ""]
    lines += ["### Target metric per skill", ""]
    if agent.skills:
        for series in agent.skills:
            lines += [f"#### {code(series.skill)}", ""]
            lines += _table(["cycle", "adapter", "verdict", "n", "baseline", "candidate", "change", "95% CI"],
                            ([str(p.cycle), code(p.adapter or "-"), word(p.verdict), str(p.n),
                              text.accuracy(p.baseline), text.accuracy(p.candidate), text.delta(p.delta),
                              text.ci(p.ci_low, p.ci_high)] for p in series.points), right=(0, 3, 4, 5, 6))  # fmt: skip
    else:
        lines += ["No skill has been through the gate yet.", ""]
    lines += ["### Gate deltas", ""]
    if agent.gate:
        lines += _table(["cycle", "skill", "suite", "role", "n", "baseline", "candidate", "change", "95% CI", "passed"],
                        ([str(g.cycle), code(g.skill), code(g.suite), word(g.role), str(g.n), text.accuracy(g.baseline),
                          text.accuracy(g.candidate), text.delta(g.delta), text.ci(g.ci_low, g.ci_high),
                          "yes" if g.passed else "**no**"] for g in agent.gate), right=(0, 4, 5, 6, 7))  # fmt: skip
    else:
        lines += ["No gate decisions yet.", ""]
    lines += ["### Guard suites", ""]
    if agent.guards:
        lines += _table(["cycle", "suite", "stack", "scored as", "n", "accuracy"],
                        ([str(g.cycle), code(g.suite), code(g.stack),
                          "live" if g.stack_role == "live" else f"candidate ({word(g.verdict or '-')})", str(g.n),
                          text.accuracy(g.accuracy)] for g in agent.guards), right=(0, 4, 5))  # fmt: skip
    else:
        lines += ["No guard scores yet.", ""]
    lines += ["### Deployments", ""]
    if agent.deployments:
        lines += _table(["#", "time (UTC)", "kind", "stack", "adapters", "actor", "reason", "run", "detail"],
                        ([str(d.seq), text.when(d.at), "**rollback**" if d.rollback else word(d.kind), code(d.stack),
                          " + ".join(code(a) for a in d.adapters) or "base model", escape(d.actor), escape(d.reason),
                          f"cycle {d.cycle}" if d.cycle else code(d.run_id[:12]) if d.run_id else "-",
                          escape(json.dumps(d.detail, sort_keys=True)) if d.detail else "-"]
                         for d in agent.deployments), right=(0,))  # fmt: skip
    else:
        lines += ["No deployments yet: the agent runs on the base model.", ""]
    lines += ["### Selection", ""]
    if agent.selection:
        lines += _table(["selector", "kept", "dropped"],
                        ([code(c.selector), str(c.kept), str(c.dropped)] for c in agent.selection), right=(1, 2))
    else:
        lines += ["No selection decisions recorded.", ""]
    return lines
