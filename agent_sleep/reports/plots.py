"""The report's plots: matplotlib figures drawn to SVG, handed back as ``data:`` URIs for ``<img>`` tags.

Why this shape: the HTML page must work offline and alone, so each plot travels inside it. SVG keeps
lines sharp at any zoom; as an ``<img>`` source (not inline markup) each one keeps its own ids (clip
paths, glyphs), cannot run script, and carries its text as paths, so no font is looked up at view time.
Figures are made with :class:`matplotlib.figure.Figure` directly, never through pyplot: no global
figure list, no GUI backend. ``svg.hashsalt`` and no date in the metadata make the same report give the
same bytes.

Each function returns None when there is nothing to draw (the page then says so in words); a plot is
never drawn empty. The x axis of the run plots is the cycle number (the agent's runs, oldest first),
the deployment timeline's is time, with the runs' starts marked along it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_sleep.reports.model import AgentReport, GateDelta

__all__ = ["Plot", "agent_plots"]

OUTCOME_COLORS = {"promoted": "#2ca02c", "rejected_by_gate": "#d62728", "no_signal": "#7f7f7f", "failed": "#000000",
                  "skipped_overlap": "#bcbd22", "running": "#1f77b4"}  # fmt: skip
STAGE_COLORS = {"select": "#9edae5", "generate": "#1f77b4", "evaluate": "#ff7f0e", "deploy": "#2ca02c"}
KIND_STYLE = {"deploy": ("^", "#2ca02c"), "rollback": ("X", "#d62728"), "remove_skill": ("v", "#ff7f0e")}
_RC = {"svg.hashsalt": "agent-sleep-report", "svg.fonttype": "path", "font.size": 8.5, "axes.titlesize": 10,
       "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 7.5,
       "legend.frameon": False}  # fmt: skip


@dataclass(frozen=True)
class Plot:
    key: str  # runs | skills | gate | guards | timeline | selection
    title: str
    alt: str
    data_uri: str  # data:image/svg+xml;base64,...


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _figure(height: float = 3.4, rows: int = 1, sharex: bool = True) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, height), dpi=96, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, axes


def _svg(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cycle_axis(ax: Any, cycles: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    if cycles:
        ax.set_xlim(min(cycles) - 0.7, max(cycles) + 0.7)
    ax.set_xlabel("cycle (the agent's runs, oldest first)")


def _legend(ax: Any, **kwargs: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), **kwargs)


# ---------------------------------------------------------------- one plot each


def runs_plot(agent: AgentReport) -> Plot | None:
    """Seconds per stage of each run, stacked, with the run's outcome as a coloured mark above it."""
    if not agent.runs:
        return None
    fig, (ax,) = _figure()
    cycles = [r.cycle for r in agent.runs]
    bottom = [0.0] * len(cycles)
    for stage, color in STAGE_COLORS.items():
        heights = [next((st.seconds or 0.0 for st in r.stages if st.stage == stage), 0.0) for r in agent.runs]
        if any(heights):
            ax.bar(cycles, heights, bottom=bottom, color=color, width=0.8, label=f"{stage} (s)")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    top = max(bottom) or 1.0
    for outcome, color in OUTCOME_COLORS.items():
        xs = [r.cycle for r in agent.runs if (r.outcome or "running") == outcome]
        ys = [b + top * 0.04 for r, b in zip(agent.runs, bottom, strict=True) if (r.outcome or "running") == outcome]
        if xs:
            ax.scatter(xs, ys, marker="s", s=22, color=color, label=outcome, zorder=3)
    ax.set_ylim(0, top * 1.12)
    ax.set_ylabel("seconds")
    ax.set_title(f"Runs of {agent.agent}: seconds per stage, and how each run ended")
    _cycle_axis(ax, cycles)
    _legend(ax)
    return Plot("runs", "Runs over time", f"Stacked seconds per stage for {len(cycles)} runs, marked by outcome",
                _svg(fig))


def skills_plot(agent: AgentReport) -> Plot | None:
    """Each skill's target accuracy (held-out probes) over cycles: candidate (solid) and baseline (dashed)."""
    series = agent.skills
    if not series:
        return None
    fig, (ax,) = _figure()
    busy = max(len(s.points) for s in series) > 20  # many cycles: thin lines, the marks carry the verdicts
    for s, color in zip(series, _palette(len(series)), strict=True):
        xs = [p.cycle for p in s.points]
        ax.plot(xs, [p.baseline for p in s.points], linestyle="--", color=color, alpha=0.5 if busy else 0.6,
                linewidth=0.8 if busy else 1)  # fmt: skip
        ax.plot(xs, [p.candidate for p in s.points], color=color, linewidth=0.9 if busy else 1.4,
                alpha=0.6 if busy else 1.0, label=s.skill)  # fmt: skip
        ok = [p for p in s.points if p.verdict == "admitted"]
        no = [p for p in s.points if p.verdict != "admitted"]
        ax.scatter([p.cycle for p in ok], [p.candidate for p in ok], color=color, marker="o", s=26, zorder=3)
        ax.scatter([p.cycle for p in no], [p.candidate for p in no], color=color, marker="x", s=30, zorder=3)
    ax.scatter([], [], color="#444", marker="o", label="admitted")
    ax.scatter([], [], color="#444", marker="x", label="not admitted")
    ax.plot([], [], color="#444", linestyle="--", label="baseline (live stack)")
    ax.set_ylim(-0.04, 1.04)
    ax.set_ylabel("target accuracy")
    ax.set_title("Target metric per skill: accuracy on the skill's held-out probes")
    _cycle_axis(ax, [p.cycle for s in series for p in s.points])
    _legend(ax)
    return Plot("skills", "Target metric per skill",
                f"Target accuracy of {len(series)} skill(s) over the cycles that gated them", _svg(fig))


def _errorbars(ax: Any, rows: list[GateDelta], key: str) -> None:
    names = list(dict.fromkeys(getattr(g, key) for g in rows))
    width = 0.6 / max(len(names), 1)
    for i, (name, color) in enumerate(zip(names, _palette(len(names)), strict=True)):
        mine = [g for g in rows if getattr(g, key) == name]
        offset = (i - (len(names) - 1) / 2) * width
        for passed, marker, face in ((True, "o", color), (False, "X", "white")):
            sel = [g for g in mine if g.passed is passed]
            if not sel:
                continue
            ax.errorbar([g.cycle + offset for g in sel], [g.delta for g in sel],
                        yerr=[[g.delta - g.ci_low for g in sel], [g.ci_high - g.delta for g in sel]],
                        fmt=marker, color=color, markerfacecolor=face, markersize=5, elinewidth=1, capsize=2,
                        label=name if passed or not any(g.passed for g in mine) else None)  # fmt: skip
    ax.axhline(0.0, color="#888", linewidth=0.8)


def gate_plot(agent: AgentReport) -> Plot | None:
    """The gate's paired changes with their bootstrap CIs: targets per skill, guards and interference per suite."""
    if not agent.gate:
        return None
    target = [g for g in agent.gate if g.role == "target"]
    others = [g for g in agent.gate if g.role != "target"]
    panels = [(rows, key, title) for rows, key, title in
              ((target, "skill", "target suites (per skill)"), (others, "suite", "guard and interference suites"))
              if rows]  # fmt: skip
    fig, axes = _figure(height=2.6 * len(panels) + 0.6, rows=len(panels))
    for ax, (rows, key, title) in zip(axes, panels, strict=True):
        _errorbars(ax, rows, key)
        ax.set_ylabel("change (candidate - baseline)")
        ax.set_title(f"Gate deltas with 95% bootstrap CI: {title}; hollow X = check failed", loc="left")
        _legend(ax)
    _cycle_axis(axes[-1], [g.cycle for g in agent.gate])
    return Plot("gate", "Gate deltas", f"{len(agent.gate)} gate comparisons with confidence intervals", _svg(fig))


def guards_plot(agent: AgentReport) -> Plot | None:
    """Guard-suite accuracy of the live stack at each run (lines) and of each candidate (marks)."""
    if not agent.guards:
        return None
    fig, (ax,) = _figure()
    suites = list(dict.fromkeys(g.suite for g in agent.guards))
    width = 0.5 / len(suites)
    for i, (suite, color) in enumerate(zip(suites, _palette(len(suites)), strict=True)):
        offset = (i - (len(suites) - 1) / 2) * width  # suites with equal scores stay apart
        live = sorted((g for g in agent.guards if g.suite == suite and g.stack_role == "live"), key=lambda g: g.cycle)
        ax.plot([g.cycle + offset for g in live], [g.accuracy for g in live], color=color, marker="o", markersize=3.5,
                linewidth=1.4, label=f"{suite} (live)")  # fmt: skip
        cand = [g for g in agent.guards if g.suite == suite and g.stack_role == "candidate"]
        for admitted, marker in ((True, "^"), (False, "x")):
            sel = [g for g in cand if (g.verdict == "admitted") is admitted]
            if sel:
                ax.scatter([g.cycle + offset for g in sel], [g.accuracy for g in sel], color=color, marker=marker,
                           s=26, zorder=3)  # fmt: skip
    ax.scatter([], [], color="#444", marker="^", label="candidate, admitted")
    ax.scatter([], [], color="#444", marker="x", label="candidate, not admitted")
    ax.set_ylim(-0.04, 1.04)
    ax.set_ylabel("guard accuracy")
    ax.set_title("Guard suites over time: the live stack at each run, and the candidates it was compared with")
    _cycle_axis(ax, [g.cycle for g in agent.guards])
    _legend(ax)
    return Plot("guards", "Guard-suite scores over time", f"Accuracy on {len(suites)} guard suite(s) per cycle",
                _svg(fig))


def timeline_plot(agent: AgentReport, now: datetime) -> Plot | None:
    """The live stack's version over time, a mark per deployment (rollbacks in red, annotated), runs below."""
    if not agent.deployments:
        return None
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig, (ax,) = _figure(height=3.6)
    deps = agent.deployments
    end = max(now, deps[-1].at)
    xs = [d.at for d in deps] + [end]
    ys = [d.stack_version for d in deps]
    ax.step(xs, ys + ys[-1:], where="post", color="#555", linewidth=1.3, label="live stack version")
    for kind, (marker, color) in KIND_STYLE.items():
        sel = [d for d in deps if d.kind == kind]
        if sel:
            ax.scatter([d.at for d in sel], [d.stack_version for d in sel], marker=marker, color=color,
                       s=90 if kind == "rollback" else 40, zorder=3, label=kind)  # fmt: skip
    others = [d for d in deps if d.kind not in KIND_STYLE]
    if others:
        ax.scatter([d.at for d in others], [d.stack_version for d in others], marker="D", color="#9467bd", s=30,
                   zorder=3, label="other")  # fmt: skip
    top = max(ys)
    rollbacks = [d for d in deps if d.rollback]
    for d in rollbacks:  # who rolled back, while there is room to say it; the table below has every one
        actor = d.actor if len(d.actor) <= 24 else d.actor[:23] + "…"
        label = f"rollback #{d.seq}\nby {actor}" if len(rollbacks) <= 4 else f"#{d.seq}"
        ax.annotate(label, (d.at, d.stack_version), xytext=(5, -14 if len(rollbacks) > 4 else 10),
                    textcoords="offset points", fontsize=7, color="#d62728")  # fmt: skip
    if agent.runs:
        for outcome, color in OUTCOME_COLORS.items():
            sel = [r.started_at for r in agent.runs if (r.outcome or "running") == outcome]
            if sel:
                ax.scatter(sel, [0.35] * len(sel), marker="|", s=120, color=color, label=f"run: {outcome}")
    ax.set_ylim(0, top + 1.2)
    ax.yaxis.set_major_locator(_int_locator())
    ax.set_ylabel("stack version (vN)")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"Deployments of {agent.agent}: which stack was live when")
    _legend(ax)
    return Plot("timeline", "Deployment timeline",
                f"{len(deps)} deployment(s), {sum(d.rollback for d in deps)} rollback(s) marked in red", _svg(fig))


def _int_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True, nbins=8)


def selection_plot(agent: AgentReport) -> Plot | None:
    """Kept and dropped items per selector, summed over the runs, in chain order."""
    counts = agent.selection
    if not counts:
        return None
    fig, (ax,) = _figure(height=max(1.6, 0.42 * len(counts) + 1.0))
    names = [c.selector for c in counts][::-1]
    kept = [c.kept for c in counts][::-1]
    dropped = [c.dropped for c in counts][::-1]
    ax.barh(names, kept, color="#2ca02c", label="kept")
    ax.barh(names, dropped, left=kept, color="#d62728", label="dropped")
    total = max((k + d for k, d in zip(kept, dropped, strict=True)), default=1) or 1
    for y, (k, d) in enumerate(zip(kept, dropped, strict=True)):
        ax.text(k + d + total * 0.01, y, f"{k} kept / {d} dropped", va="center", fontsize=7.5)
    ax.set_xlim(0, total * 1.3)
    ax.set_xlabel("items (episodes and documents), all runs")
    ax.set_title("Selection: kept and dropped per selector")
    _legend(ax)
    return Plot("selection", "Selection statistics", f"Kept and dropped per selector for {len(counts)} selector(s)",
                _svg(fig))


def agent_plots(agent: AgentReport, now: datetime) -> list[Plot]:
    """Every plot that has data for ``agent``, in page order."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        made = [runs_plot(agent), skills_plot(agent), gate_plot(agent), guards_plot(agent),
                timeline_plot(agent, now), selection_plot(agent)]  # fmt: skip
    return [p for p in made if p is not None]
