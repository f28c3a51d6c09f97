"""Report generation time for 100 sleep cycles of history: ``agent-sleep report`` as JSON, Markdown and HTML.

To run:  nice -n 10 .venv/bin/python evals/bench_report.py [--cycles 100]

Seeds a fresh SQLite database with real history, the way the report tests do (``tests/reports/history.py``):
``--cycles`` real consolidation runs on the tiny random model (the test planner, sft, lm-eval, the gate,
deploy), in a fixed pattern of teaching, wrong answers and quiet nights, with a skill removal and a rollback
every ten cycles. Then it times :func:`agent_sleep.reports.collect_report` (the database read) and each
format's render, three times each (median), and the HTML page in headless Chromium when one is installed
(the browser checks of ``tests/reports/browser.py``; its screenshot goes to evals/results/report.png).
Writes evals/results/report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One block of ten cycles; "remove" and "rollback" come after the cycle at their index when they can.
PATTERN = ("teach:capitals", "teach:weather", "wrong:capitals", "quiet", "teach:weather", "wrong:weather",
           "teach:capitals", "quiet", "wrong:weather", "teach:weather")  # fmt: skip
REMOVE_AT, ROLLBACK_AT = 4, 7


def seed(world: Any, cycles: int) -> dict[str, Any]:
    from tests.consolidation.conftest import AGENT
    from tests.reports.history import seed_history

    t0 = time.perf_counter()
    for i in range(cycles):
        steps = [PATTERN[i % len(PATTERN)]]
        live = world.registry.live(AGENT)
        if i % 10 == REMOVE_AT and live is not None and live.stack.skills:
            steps.append(f"remove:{live.stack.skills[0]}")
        if i % 10 == ROLLBACK_AT and live is not None and live.previous_id is not None:
            steps.append("rollback")
        seed_history(world, steps)
        if (i + 1) % 10 == 0:
            print(f"seeded {i + 1} cycles in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return {"seed_s": round(time.perf_counter() - t0, 1)}


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    from evals.record import write_results

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "report.json")
    ap.add_argument("--screenshot", type=Path, default=ROOT / "evals" / "results" / "report.png")
    args = ap.parse_args()
    os.nice(10)
    import torch

    torch.set_num_threads(1)
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.reports import collect_report, render
    from tests.consolidation.conftest import make_world
    from tests.helpers_models import make_tiny_model_dir

    with tempfile.TemporaryDirectory(prefix="agent-sleep-bench-report-") as tmp:
        root = Path(tmp)
        model = make_tiny_model_dir(root / "model")
        world = make_world(root, f"sqlite:///{root / 'experience.sqlite'}", model, load_base_model(str(model)))
        try:
            seeded = seed(world, args.cycles)
            collect_s, report = timed(lambda: collect_report(world.store))
            record: dict[str, Any] = {
                "machine": f"{platform.machine()} {os.cpu_count()} cpus, niced, torch 1 thread",
                "python": platform.python_version(), "date": datetime.now(timezone.utc).date().isoformat(),
                "cycles": args.cycles, **seeded, "database": "SQLite (file)",
            }  # fmt: skip
            (agent,) = report.agents
            record["history"] = {
                "runs": len(agent.runs), "outcomes": dict(sorted(Counter(r.outcome for r in agent.runs).items())),
                "gate_rows": len(agent.gate), "guard_rows": len(agent.guards), "deployments": len(agent.deployments),
                "rollbacks": sum(d.rollback for d in agent.deployments),
                "selection_decisions": sum(c.kept + c.dropped for c in agent.selection),
            }  # fmt: skip
            record["collect_s"] = round(collect_s, 3)
            formats: dict[str, Any] = {}
            for fmt in ("json", "md", "html"):
                render_s, text = timed(lambda fmt=fmt: render(report, fmt))
                formats[fmt] = {"render_s": round(render_s, 3), "total_s": round(collect_s + render_s, 3),
                                "bytes": len(text.encode())}  # fmt: skip
                if fmt == "html":
                    page = root / "report.html"
                    page.write_text(text, encoding="utf-8")
                    formats[fmt]["plots"] = text.count('class="plot"')
            record["formats"] = formats
            record["browser"] = browser_check(page, args.screenshot)
        finally:
            world.runtime.stop()
            world.store.close()
    write_results(args.out, record)
    print(json.dumps(record, indent=2))


def browser_check(page: Path, screenshot: Path) -> dict[str, Any]:
    """The page in headless Chromium: load time, problems found (none expected), a screenshot."""
    from tests.reports.browser import find_chromium, problems, render_page

    if find_chromium() is None:
        return {"skipped": "no chromium installed"}
    t0 = time.perf_counter()
    view = render_page(page)
    seconds = time.perf_counter() - t0
    screenshot.write_bytes(view.screenshot)
    return {"load_and_screenshot_s": round(seconds, 2), "page_px": [view.width, view.height],
            "problems": problems(view, {"runs", "skills", "gate", "guards", "timeline", "selection"}),
            "screenshot": str(screenshot.relative_to(ROOT)) if screenshot.is_relative_to(ROOT) else str(screenshot)}


if __name__ == "__main__":
    main()
