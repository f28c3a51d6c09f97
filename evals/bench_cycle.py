"""Benchmark one full sleep cycle over 1,000 logged episodes on SmolLM2-135M-Instruct (CPU).

To run:  .venv/bin/python evals/bench_cycle.py [--n 1000] [--config FILE]

Fills a fresh data directory with ``n`` synthetic helpdesk episodes (the generator of
``evals/bench_selection.py``: 12 topics, tool calls, feedback on ~35 %, corrections on ~4 %, near
repeats) plus two knowledge documents, then runs ``agent-sleep sleep --agent helpdesk --json`` in a
fresh process with the default cycle config (default generators and budgets; the default model) and
reports the seconds per stage from its JSON, the wall time of the whole command (model load
included) and its peak RSS. Goal (issue: the sleep cycle): <= 5 minutes end to end. Writes
evals/results/cycle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCUMENTS = {
    "kb/warranty.md": "# Warranty\n\nEvery Halvik product has a warranty of 26 months from delivery. Batteries "
                      "are covered for 14 months. Claims go to warranty@halvik.example with the order number.",
    "kb/shipping.md": "# Shipping\n\n| Zone | Days | Fee |\n|---|---|---|\n| Nordics | 3 | 4.90 EUR |\n"
                      "| Rest of EU | 6 | 9.50 EUR |\n\nOrders above 120 EUR ship free in every zone.",
}  # fmt: skip


def populate(data_dir: Path, n: int) -> float:
    from agent_sleep.config import Settings
    from agent_sleep.store import ExperienceStore
    from evals.bench_selection import synthetic_ops

    t0 = time.perf_counter()
    store = ExperienceStore(settings=Settings(data_dir=data_dir))
    for chunk in synthetic_ops(n):
        store.write_ops(chunk)
    for source, text in DOCUMENTS.items():
        store.add_document(source, text, agent="helpdesk")
    store.close()
    return time.perf_counter() - t0


def main() -> None:
    from evals.record import write_results

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--config", type=Path, help="a cycle config (default: the defaults)")
    ap.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "cycle.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-sleep-bench-cycle-") as tmp:
        data_dir = Path(tmp) / "data"
        populate_s = populate(data_dir, args.n)
        env = {**os.environ, "AGENT_SLEEP_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
        env.pop("AGENT_SLEEP_DATABASE_URL", None)
        cmd = [sys.executable, "-m", "agent_sleep.cli.main", "sleep", "--agent", "helpdesk", "--json"]
        if args.config:
            cmd += ["--config", str(args.config)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode not in (0, 3):
            sys.exit(f"sleep exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(proc.stdout)
    record = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version(),
        "date": datetime.now(timezone.utc).date().isoformat(), "goal": "<= 300 s end to end",
        "episodes": args.n, "populate_s": round(populate_s, 1), "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb), "exit_code": proc.returncode, "outcome": result.get("outcome"),
        "stages_s": result.get("seconds") or result.get("stages"),
        "skills": [{k: s.get(k) for k in ("skill", "generator", "status", "train_items", "probes",
                                          "generate_seconds", "reasons")} for s in result.get("skills", [])],
        "selection": result.get("selection"),
    }  # fmt: skip
    write_results(args.out, record)
    print(json.dumps({k: record[k] for k in ("episodes", "wall_s", "peak_rss_mb", "outcome", "stages_s")}, indent=2))
    for s in record["skills"]:
        print(f"  {s['skill']:<28} {s['generator']:<6} {s['status']:<9} train {s['train_items']} probes {s['probes']}")


if __name__ == "__main__":
    main()
