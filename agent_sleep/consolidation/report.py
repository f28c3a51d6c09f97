"""``report.json`` and ``report.md`` in a run's folder: what was selected and why, what the gate saw, what went live.

``report.json`` holds everything (the :class:`~.result.CycleResult`, the plan, every stack's accuracy per
suite, the stage rows); ``report.md`` is the same for a person: a per-skill table, each suite's baseline
→ candidate with the change and its confidence interval (for a skill tried with several generators: a
row per candidate with its verdict, target change and worst guard change, which one won and why, then
each candidate's suites), selection counts per selector, the deployment
and the seconds per stage. Both are replaced atomically each time a run ends (a resumed run rewrites them).
The lm-eval task files and raw results sit beside them under ``eval/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import StageRecord
from agent_sleep.fsutil import atomic_write_json, atomic_write_text

__all__ = ["render_markdown", "report_data", "write_report"]


def report_data(result: CycleResult, stages: Mapping[str, Mapping[str, Any]],
                rows: Mapping[str, StageRecord]) -> dict[str, Any]:  # fmt: skip
    """The JSON report: the result plus the plan, the scores and the stage rows."""
    chosen = stages.get("select") or {}
    judged = stages.get("evaluate") or {}
    scores = {label: {suite: r["metrics"].get("accuracy") for suite, r in by_suite.items()}
              for label, by_suite in (judged.get("results") or {}).items()}  # fmt: skip
    return {
        "result": result.to_json(),
        "plan": chosen.get("plan"),
        "left_out": chosen.get("left_out") or {},
        "evaluation": {"incumbent": judged.get("incumbent"), "suites": judged.get("suites") or {},
                       "accuracy": scores, "stack_seconds": judged.get("stack_seconds") or {},
                       "files": sorted({r["artifact"] for s in (judged.get("results") or {}).values()
                                        for r in s.values() if r.get("artifact")})},  # fmt: skip
        "deploy": stages.get("deploy"),
        "generate": (stages.get("generate") or {}).get("skills"),
        "stages": {name: {"status": r.status, "attempt": r.attempt, "seconds": r.seconds, "error": r.error}
                   for name, r in rows.items()},  # fmt: skip
    }


def _pct(value: float) -> str:
    return f"{value:.3f}"


def _comparisons(comparisons: list[dict[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    return ["| suite | role | n | baseline | candidate | change | 95% CI | passed |",
            "|---|---|---:|---:|---:|---:|---|---|",
            *(f"| {c['suite']} | {c['role']} | {c['n']} | {_pct(c['baseline'])} | {_pct(c['candidate'])} | "
              f"{c['delta']:+.3f} | {c['ci_low']:+.3f} .. {c['ci_high']:+.3f} | {'yes' if c['passed'] else 'no'} |"
              for c in comparisons), ""]  # fmt: skip


def _candidates(skill: Mapping[str, Any], candidates: list[dict[str, Any]]) -> list[str]:
    """A skill tried with several generators: one row each, the winner and why, then each one's suites."""
    lines = ["| generator | adapter | verdict | weight | target change (95% CI) | worst guard change | chosen |",
             "|---|---|---|---:|---|---:|---|"]  # fmt: skip
    for c in candidates:
        target = next((x for x in c["comparisons"] if x["role"] == "target"), None)
        change = f"{target['delta']:+.3f} ({target['ci_low']:+.3f} .. {target['ci_high']:+.3f})" if target else "-"
        guard = f"{-c['guard_loss']:+.3f}" if c.get("guard_loss") is not None else "-"
        weight = f"{c['weight']:g}" if c.get("weight") is not None else "-"
        gen = c["generator"] + (f" {c['generator_version']}" if c.get("generator_version") else "")
        lines.append(f"| {gen} | {c.get('adapter') or '-'} | {c['status']} | {weight} | {change} | {guard} | "
                     f"{'**yes**' if c.get('chosen') else 'no'} |")  # fmt: skip
    winner = skill.get("winner")
    lines += ["", f"- winner: **{winner}** ({skill.get('adapter')}): {skill.get('why')}" if winner
              else f"- winner: none: {skill.get('why') or '; '.join(skill['reasons'])}"]  # fmt: skip
    for c in candidates:
        lines += ["", f"#### {skill['skill']} with {c['generator']}: {c['status']}", ""]
        lines += _comparisons(c["comparisons"])
        lines += [f"- {reason}" for reason in c["reasons"]]
    return lines


def render_markdown(data: Mapping[str, Any]) -> str:
    """``report.md`` from :func:`report_data`'s value."""
    r = data["result"]
    lines = [f"# Consolidation run {r['run_id']}", "",
             f"- agent: `{r['agent']}`",
             f"- outcome: **{r['outcome']}**" + (f": {r['error']}" if r.get("error") else ""),
             f"- live before: `{r.get('incumbent_stack') or 'base model'}`",
             f"- deployed: `{r['deployed_stack']}`" if r.get("deployed_stack") else "- deployed: nothing",
             f"- started {r.get('started_at')}, ended {r.get('ended_at')}",
             f"- marked consolidated: {r.get('consumed', {}).get('episodes', 0)} episode(s), "
             f"{r.get('consumed', {}).get('documents', 0)} document(s)", ""]  # fmt: skip
    lines += ["## Skills", ""]
    if r["skills"]:
        lines += ["| skill | generator | adapter | replaces | train items | probes | verdict |",
                  "|---|---|---|---|---:|---:|---|"]  # fmt: skip
        for s in r["skills"]:
            gen = s["generator"] + (f" {s['generator_version']}" if s.get("generator_version") else "")
            lines.append(f"| {s['skill']} | {gen} | {s.get('adapter') or '-'} | {s.get('replaces') or '-'} | "
                         f"{s['train_items']} | {s['probes']} | {s['status']} |")  # fmt: skip
        for s in r["skills"]:
            at = f" at stack weight {s['weight']:g}" if s.get("weight") not in (None, 1.0) else ""
            lines += ["", f"### {s['skill']}: {s['status']}{at}", ""]
            candidates = s.get("candidates") or []
            if len(candidates) > 1:
                lines += _candidates(s, candidates)
                continue
            lines += _comparisons(s["comparisons"])
            lines += [f"- {reason}" for reason in s["reasons"]]
            if s.get("routed"):
                lines.append("- routed: applied only to requests like its training material; it fired on "
                             + ", ".join(f"{f['fired']}/{f['items']} of {n}" for n, f in s["routed"].items())
                             + " (elsewhere scored as the stack it joins)")
    else:
        lines.append("No skill had material to learn from.")
    lines += ["", "## Selection", ""]
    if r.get("selection"):
        lines += ["| selector | kept | dropped |", "|---|---:|---:|"]
        lines += [f"| {name} | {c.get('kept', 0)} | {c.get('dropped', 0)} |" for name, c in r["selection"].items()]
    else:
        lines.append("No decisions recorded.")
    for skill, reason in (data.get("left_out") or {}).items():
        lines.append(f"- skill `{skill}` left out: {reason}")
    lines += ["", "`agent-sleep runs explain RUN [EPISODE]` says why each item was used or not.", "", "## Stages", "",
              "| stage | status | attempt | seconds |", "|---|---|---:|---:|"]  # fmt: skip
    for name, st in data["stages"].items():
        seconds = f"{st['seconds']:.1f}" if st.get("seconds") is not None else "-"
        lines.append(f"| {name} | {st['status']} | {st['attempt']} | {seconds} |")
    files = data["evaluation"]["files"]
    if files:
        lines += ["", "## Files", "", "lm-eval tasks: `eval/tasks/`; results and samples:"]
        lines += [f"- `{Path(f).name}`" for f in files]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, result: CycleResult, stages: Mapping[str, Mapping[str, Any]],
                 rows: Mapping[str, StageRecord]) -> dict[str, Any]:  # fmt: skip
    """Write ``report.json`` and ``report.md`` into ``folder`` (each atomically); returns the JSON value."""
    data = report_data(result, stages, rows)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "report.json", data, sort_keys=False)
    atomic_write_text(folder / "report.md", render_markdown(data))
    return data
