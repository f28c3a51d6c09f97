"""Benchmark signal selection: build_plan over a SQLite store of N synthetic, varied episodes.

To run:  .venv/bin/python evals/bench_selection.py [--n 1000 10000 100000] [--chain recency,outcome,...]

For each N it fills a SQLite file (bulk writes through ``ExperienceStore.write_ops``; kept under
``--workdir`` so a rerun reuses it), then runs ``build_plan`` with the chain in a fresh process and
reports the seconds and that process's peak RSS (``resource.getrusage``; the interpreter and imports
included, and the RSS just before ``build_plan`` beside it). Goal (issue: signal selection): linear,
<= 60 s and <= 1 GB at 100,000 episodes. Writes evals/results/selection.json.

The episodes: helpdesk conversations on 12 topics with random order numbers, names and amounts; one
to three turns, tool calls with results, and model-input payloads (as capture stores them) on the
assistant turns; 70% completed, 10% error, 10% interrupted or running; feedback on about 35% (scores,
labels, 4% corrections); 8% repeat an earlier conversation word for word or nearly; started over the
last 35 days; the oldest tenth is marked consolidated by an earlier run (novelty's references).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = [
    ("Where is my order {order}?", "order_status", "Order {order} left our {city} warehouse on {day} and should "
     "arrive within {n} days."),
    ("How long do refunds take for order {order}?", "refund_policy", "Refunds are paid within {n} business days "
     "after we receive the item."),
    ("Can I change the delivery address of {order} to {city}?", "update_address", "Done: order {order} will now "
     "go to {city}."),
    ("My invoice for {amount} EUR looks wrong.", "invoice_lookup", "The invoice of {amount} EUR includes {n} "
     "EUR of shipping; I have sent a corrected copy."),
    ("How long is the warranty on the {product}?", "warranty", "The {product} has a warranty of {n} years."),
    ("I forgot my password, {name} here.", "reset_password", "Hi {name}, I sent a reset link to your e-mail."),
    ("Do you ship to {city}?", "shipping_zones", "Yes, we ship to {city} within {n} days."),
    ("Is the {product} in stock?", "stock", "We have {n} of the {product} in stock."),
    ("Cancel order {order}, please.", "cancel_order", "Order {order} is cancelled; the refund of {amount} EUR is "
     "on its way."),
    ("What are your opening hours on {day}?", None, "On {day} we are open from 9 to {n} pm."),
    ("Can I pay the {product} in {n} instalments?", "payment_plans", "Yes, the {product} can be paid in {n} "
     "monthly instalments."),
    ("The {product} arrived broken.", "open_ticket", "Sorry, {name}! Ticket {order} is open; a courier picks the "
     "{product} up on {day}."),
]
CITIES = ["Leeds", "Oslo", "Lyon", "Porto", "Graz", "Turin", "Ghent", "Cork", "Bergen", "Malmo"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
PRODUCTS = ["kettle", "blender", "drill", "lamp", "router", "desk", "heater", "scooter", "camera", "printer"]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivo", "Jun"]


def _fill(template: str, rnd: random.Random) -> str:
    return template.format(order=f"A{rnd.randrange(10_000, 99_999)}", city=rnd.choice(CITIES), day=rnd.choice(DAYS),
                           n=rnd.randrange(2, 30), amount=rnd.randrange(10, 900), product=rnd.choice(PRODUCTS),
                           name=rnd.choice(NAMES))  # fmt: skip


def synthetic_ops(n: int, seed: int = 0) -> Any:
    """Write ops (as capture makes them) for ``n`` episodes of agent ``helpdesk``, in chunks."""
    rnd = random.Random(seed)
    now = time.time()
    earlier: list[list[tuple[str, str, str]]] = []
    ops: list[dict[str, Any]] = []
    for i in range(n):
        eid = f"{i:032x}"
        ts = now - rnd.uniform(0, 35 * 86400)
        ops.append({"op": "episode_start", "id": eid, "agent": "helpdesk", "thread_id": f"t{i % 5000}", "ts": ts})
        if earlier and rnd.random() < 0.08:  # an FAQ asked again: the same words, or nearly
            turns = list(rnd.choice(earlier))
            if rnd.random() < 0.5:
                turns[-1] = (turns[-1][0], turns[-1][1], turns[-1][2] + " Thanks for waiting.")
        else:
            turns = []
            for _ in range(rnd.choice((1, 1, 1, 2, 3))):
                q, tool, a = rnd.choice(TOPICS)
                turns.append((_fill(q, rnd), tool or "lookup", _fill(a, rnd)))
            if len(earlier) < 2000:
                earlier.append(turns)
        seq = 0

        def event(kind: str, content: str = "", **extra: Any) -> None:
            nonlocal seq
            ops.append({"op": "event", "id": f"{eid}-{seq}", "episode_id": eid, "seq": seq, "kind": kind,
                        "content": content, "ts": ts + seq, **extra})  # fmt: skip
            seq += 1

        event("system_message", "You are the helpdesk of Example Ltd. Be brief and exact.")
        for q, tool, a in turns:
            event("user_message", q)
            call = {"id": f"c{seq}", "name": tool, "args": {"query": q[:40]}}
            blobs = {f"h{k}": {"type": "human", "data": {"content": q * 3}} for k in range(4)}  # a model's input
            event("assistant_message", "", payload={"tool_calls": [call], "model_input": {
                "messages": list(blobs), "blobs": blobs}})
            event("tool_call", name=tool, payload={"args": call["args"], "tool_call_id": call["id"]})
            event("tool_result", json.dumps({"ok": True, "detail": a[:60]}), name=tool,
                  payload={"tool_call_id": call["id"], "status": "success"})
            event("assistant_message", a, payload={"model_input": {"messages": ["h0", "h1"]}})
        r = rnd.random()
        status = "completed" if r < 0.8 else "error" if r < 0.9 else "interrupted" if r < 0.95 else None
        if status:
            outcome = rnd.choice(["resolved", "resolved", "resolved", "escalated", "failed", None])
            ops.append({"op": "episode_end", "id": eid, "status": status, "outcome": outcome, "ts": ts + seq})
        r = rnd.random()
        if r < 0.35:
            fb: dict[str, Any] = {"op": "feedback", "id": f"{eid}-fb", "episode_id": eid, "source": "human",
                                  "ts": ts + seq + 60}  # fmt: skip
            if r < 0.04:
                fb.update(score=0.0, correction=f"The right answer: {_fill(rnd.choice(TOPICS)[2], rnd)}")
            elif r < 0.25:
                fb.update(score=round(rnd.random(), 2))
            else:
                fb.update(label=rnd.choice(["thumbs_up", "thumbs_up", "thumbs_down", "slow"]))
            ops.append(fb)
        if len(ops) >= 20_000:
            yield ops
            ops = []
    if ops:
        yield ops


def populate(path: Path, n: int) -> dict[str, Any]:
    from agent_sleep.config import Settings
    from agent_sleep.store import ExperienceStore

    t0 = time.perf_counter()
    store = ExperienceStore(f"sqlite:///{path}", settings=Settings(data_dir=path.parent))
    for chunk in synthetic_ops(n):
        store.write_ops(chunk)
    # The oldest tenth was consolidated by an earlier cycle: novelty compares the new episodes with those.
    from sqlalchemy import text as sql

    with store.engine.begin() as conn:
        cutoff = conn.execute(sql("SELECT started_at FROM episodes ORDER BY started_at LIMIT 1 OFFSET :k"),
                              {"k": n // 10}).scalar()  # fmt: skip
        conn.execute(sql("UPDATE episodes SET consolidated_at = started_at, consolidation_run = 'earlier' "
                         "WHERE started_at < :cutoff"), {"cutoff": cutoff})  # fmt: skip
    store.add_document("kb/warranty.md", "Every product has a warranty of two years from the date of purchase.",
                       agent="helpdesk", metadata={"probes": [{"question": "How long is the warranty?",
                                                               "answer": "two years"}]})  # fmt: skip
    store.close()
    return {"populate_s": time.perf_counter() - t0}


def measure(path: Path, chain: list[str] | None) -> dict[str, Any]:
    """build_plan over the file at ``path`` in this process; seconds, peak RSS, and what came out."""
    from agent_sleep.config import Settings
    from agent_sleep.selectors import SelectionConfig, build_plan
    from agent_sleep.store import ExperienceStore

    config = SelectionConfig() if chain is None else SelectionConfig(chain=chain)  # type: ignore[arg-type]
    store = ExperienceStore(f"sqlite:///{path}", settings=Settings(data_dir=path.parent))
    events = store.count_events()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    result = build_plan(store, "helpdesk", config)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plan = result.plan
    return {
        "events": events, "chain": [s.name for s in config.chain], "select_s": seconds, "peak_rss_mb": peak,
        "rss_before_mb": rss_before, "decisions": len(result.decisions), "stats": plan.stats,
        "skills": {s.skill: {"generator": s.generator, "documents": len(s.documents),
                             "conversations": len(s.conversations), "probes": len(s.probes)} for s in plan.skills},
    }  # fmt: skip


def main() -> None:
    from evals.record import write_results

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="episode counts")
    ap.add_argument("--chain", help="comma-separated selector names (default: the default chain)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/agent-sleep-bench-selection"),
                    help="where the SQLite files are kept between runs")
    ap.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "selection.json")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = ap.parse_args()
    chain = args.chain.split(",") if args.chain else None
    if args.measure:
        print(json.dumps(measure(args.measure, chain)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    for n in args.n:
        path = args.workdir / f"episodes-{n}.sqlite"
        info: dict[str, Any] = {"episodes": n}
        if not path.exists():
            tmp = path.with_suffix(".partial")
            tmp.unlink(missing_ok=True)
            info |= populate(tmp, n)
            tmp.rename(path)
        cmd = [sys.executable, __file__, "--measure", str(path)] + (["--chain", args.chain] if args.chain else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        info |= json.loads(out.stdout.strip().splitlines()[-1])
        info["episodes_per_s"] = n / info["select_s"]
        runs.append(info)
        print(f"N={n:>7,}  select {info['select_s']:7.2f} s  ({info['episodes_per_s']:8,.0f} episodes/s)  "
              f"peak RSS {info['peak_rss_mb']:6.0f} MB (before build_plan {info['rss_before_mb']:.0f} MB)  "
              f"decisions {info['decisions']:,}", flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    by_n = {r["episodes"]: r for r in previous.get("runs", [])} | {r["episodes"]: r for r in runs}
    write_results(args.out, {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version(),
        "date": datetime.now(timezone.utc).date().isoformat(), "goal": "<= 60 s and <= 1 GB at 100,000 episodes",
        "runs": [by_n[k] for k in sorted(by_n)],
    })  # fmt: skip


if __name__ == "__main__":
    main()
