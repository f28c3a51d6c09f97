"""Benchmark the wake phase: logging throughput, capture overhead, base-model speed.

To run:  .venv/bin/python evals/bench_foundation.py [--pg-url URL] [--skip-model]

Prints a Markdown table (the README's "Measured results" come from it) and
writes evals/results/foundation.json. Goals (issue #2): >= 20,000 events/s on
SQLite through capture, < 1 ms capture overhead per LangGraph agent step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_logging(url: str, n_events: int = 100_000, events_per_episode: int = 20) -> dict[str, float]:
    """Events/s through the capture path (recorder -> background writer -> SQL)."""
    from agent_sleep.capture.recorder import ExperienceRecorder
    from agent_sleep.capture.writer import BackgroundWriter
    from agent_sleep.config import Settings
    from agent_sleep.store import ExperienceStore

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=url)
        store = ExperienceStore(settings=settings)
        before = store.count_events()
        writer = BackgroundWriter(lambda: ExperienceStore(settings=settings), spill_dir=Path(tmp) / "spill")
        rec = ExperienceRecorder("bench", settings=settings, writer=writer)
        writer.flush(30)  # store opened and migrated before the clock starts
        t0 = time.perf_counter()
        for _ in range(n_events // events_per_episode):
            eid = rec.start_episode(thread_id="bench")
            for j in range(events_per_episode):
                rec.log(eid, "user_message" if j % 2 == 0 else "assistant_message",
                        "Where is my order A1001? It was due yesterday.", payload={"j": j})
            rec.end_episode(eid)
        t_submit = time.perf_counter() - t0
        assert writer.flush(600), "writer did not drain"
        total = time.perf_counter() - t0
        written = store.count_events() - before
        writer.close()
        store.close()
    assert written == n_events, (written, n_events)
    return {"events": n_events, "seconds": total, "events_per_s": n_events / total,
            "submit_us_per_event": t_submit / n_events * 1e6}


def bench_capture_overhead(url: str, invokes: int = 300) -> dict[str, float]:
    """Extra time per create_agent invocation and per graph step when capture is on."""
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from agent_sleep.capture.callback import SleepCallbackHandler
    from agent_sleep.capture.middleware import SleepMiddleware
    from agent_sleep.config import Settings
    from tests.fakes import scripted, tool_call

    @tool
    def lookup(order: str) -> str:
        """Look up an order."""
        return f"order {order} shipped"

    def replies(n: int) -> list[Any]:
        out: list[Any] = []
        for _ in range(n):
            out += [tool_call("lookup", {"order": "A1"}), "It shipped."]
        return out

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=url)
        total = invokes * 3  # warm-up + runs, for each variant
        plain = create_agent(scripted(*replies(total)), [lookup])
        mw = SleepMiddleware("bench", settings=settings)
        with_mw = create_agent(scripted(*replies(total)), [lookup], middleware=[mw])
        cb = SleepCallbackHandler("bench", settings=settings)
        cb.recorder.writer.flush(30)

        def run(agent: Any, config: dict[str, Any]) -> float:
            t0 = time.perf_counter()
            agent.invoke({"messages": [("user", "where is A1?")]}, config=config)
            return time.perf_counter() - t0

        samples: dict[str, list[float]] = {"plain": [], "callback": [], "middleware": []}
        for _ in range(20):  # warm-up
            run(plain, {}), run(plain, {"callbacks": [cb]}), run(with_mw, {})
        for _ in range(invokes):  # interleaved, so machine noise hits all variants alike
            samples["plain"].append(run(plain, {}))
            samples["callback"].append(run(plain, {"callbacks": [cb]}))
            samples["middleware"].append(run(with_mw, {}))
        cb.flush(60), mw.flush(60)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    steps = 3  # model -> tools -> model: three graph steps per invocation
    return {
        "invoke_ms_plain": med["plain"],
        "invoke_ms_callback": med["callback"],
        "invoke_ms_middleware": med["middleware"],
        "overhead_ms_per_step_callback": (med["callback"] - med["plain"]) / steps,
        "overhead_ms_per_step_middleware": (med["middleware"] - med["plain"]) / steps,
        "events_per_invoke": 5,
    }


def bench_model() -> dict[str, float]:
    """Cached load time (fresh process), prefill and decode tokens/s, fp32 on CPU."""
    code = (
        "import time,torch;t=time.perf_counter();"
        "from agent_sleep.models.loader import load_base_model;h=load_base_model();"
        "print(time.perf_counter()-t)"
    )
    load_s = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  cwd=ROOT).stdout.strip().splitlines()[-1])
    import torch

    from agent_sleep.models.loader import load_base_model

    h = load_base_model()
    model, tok = h.model, h.tokenizer
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (1, 512))
    with torch.inference_mode():
        model(ids[:, :64])
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model(ids, use_cache=False)
            times.append(time.perf_counter() - t0)
    prefill = 512 / statistics.median(times)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        model.generate(**prompt, max_new_tokens=8, do_sample=False)
        t0 = time.perf_counter()
        out = model.generate(**prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        dt = time.perf_counter() - t0
    new = out.shape[1] - prompt["input_ids"].shape[1]
    return {"load_s_cached": load_s, "prefill_tok_s_512": prefill, "decode_tok_s_64": new / dt,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    from evals.record import scratch_database, write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", default=os.environ.get("AGENT_SLEEP_TEST_PG_URL"),
                    help="PostgreSQL URL (default: $AGENT_SLEEP_TEST_PG_URL); omitted -> SQLite only")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "foundation.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    results: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version(),
                               "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        results["logging_sqlite"] = bench_logging(f"sqlite:///{tmp}/bench.sqlite", args.events)
        results["capture_sqlite"] = bench_capture_overhead(f"sqlite:///{tmp}/cap.sqlite")
    if args.pg_url:
        with scratch_database(args.pg_url, "agent_sleep_bench_") as url:
            try:
                results["logging_postgres"] = bench_logging(url, args.events)
            finally:  # before the database goes
                from agent_sleep.capture import writer as writer_mod

                for w in writer_mod._WRITERS.values():
                    w.close()
    if not args.skip_model:
        results["model"] = bench_model()

    write_results(args.out, results)
    print("| measure | value | goal |\n|---|---|---|")
    for key in ("logging_sqlite", "logging_postgres"):
        if key in results:
            r = results[key]
            goal = "≥ 20,000/s" if key.endswith("sqlite") else ""
            print(f"| logging throughput, {key.split('_')[1]} (capture path, {r['events']:,} events) | "
                  f"{r['events_per_s']:,.0f} events/s | {goal} |")
            print(f"| time on the agent's thread per event, {key.split('_')[1]} | {r['submit_us_per_event']:.1f} µs | |")
    c = results["capture_sqlite"]
    print(f"| create_agent invoke (model→tool→model, fake model), no capture | {c['invoke_ms_plain']:.2f} ms | |")
    print(f"| capture overhead per graph step, callback handler | {c['overhead_ms_per_step_callback']:.3f} ms | < 1 ms |")
    print(f"| capture overhead per graph step, middleware | {c['overhead_ms_per_step_middleware']:.3f} ms | < 1 ms |")
    if "model" in results:
        m = results["model"]
        print(f"| SmolLM2-135M load from cache (fresh process, incl. torch import) | {m['load_s_cached']:.2f} s | |")
        print(f"| prefill, 512 tokens, fp32 | {m['prefill_tok_s_512']:.0f} tokens/s | |")
        print(f"| greedy decode, 64 tokens, fp32 | {m['decode_tok_s_64']:.1f} tokens/s | |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
