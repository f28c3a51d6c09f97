"""Benchmark the live runtime on SmolLM2-135M: switch/rollback latency, decode speed, swap load test.

To run:  .venv/bin/python evals/bench_runtime.py [--swaps 100] [--quick]

Builds 8 random rank-8 q_proj/v_proj adapters for the real base model, registers
them in a throwaway registry, and measures (numbers go in the README):
  1. load-from-disk (prepare) time, and the switch itself (prepared -> live) and
     rollback-to-previous, for stacks of 1, 3 and 8 adapters;
  2. greedy decode tokens/s with 0, 1, 3, 8 adapters active, kept separate
     ("sum") versus materialised into one adapter by rank concatenation ("cat");
  3. a load test: request threads and HTTP clients (openai client against the
     OpenAI-compatible server) run while the agent's stack is deployed/rolled
     back --swaps times; every response names the stack it ran on, and its greedy
     text must equal the reference computed for that stack alone.
Writes evals/results/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPTS = ["Where is my order?", "What is the capital of France?", "Write one word about the sea."]


def make_adapters(handle: Any, dest: Path, n: int, rank: int = 8, scale: float = 0.04) -> list[Path]:
    import torch

    from agent_sleep.adapters.artifact import AdapterManifest, write_adapter

    cfg = handle.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    shapes = {"q_proj": (cfg.hidden_size, cfg.hidden_size), "v_proj": (cfg.num_key_value_heads * head_dim, cfg.hidden_size)}
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(100 + k)
        tensors = {}
        for layer in range(cfg.num_hidden_layers):
            for proj, (o, i) in shapes.items():
                mod = f"model.layers.{layer}.self_attn.{proj}"
                tensors[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(rank, i, generator=g) * scale
                tensors[f"base_model.model.{mod}.lora_B.weight"] = torch.randn(o, rank, generator=g) * scale
        manifest = AdapterManifest(generator={"name": "sft", "version": "bench"},
                                   base_model={"id": handle.spec, "content_hash": handle.content_hash},
                                   rank=rank, lora_alpha=2 * rank, target_modules=list(shapes),
                                   sources={"description": f"random benchmark adapter {k}"})
        out.append(write_adapter(dest / f"a{k}", tensors, {"r": rank, "lora_alpha": 2 * rank,
                                                           "target_modules": list(shapes)}, manifest))
    return out


def timeit(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_switch(rt: Any, names: list[str]) -> dict[str, Any]:
    from agent_sleep.runtime.live import LiveState

    res: dict[str, Any] = {}
    for n in (1, 3, 8):
        items = [(x, 1.0) for x in names[:n]]
        stack = rt.registry.create_stack(f"switch{n}", items)
        rt._layers.clear()
        t0 = time.perf_counter()
        prepared = rt.prepare(stack)  # reads n folders from disk
        load_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        rt.prepare(stack)  # adapters cached: fold + concatenate only
        prep_cached_ms = (time.perf_counter() - t0) * 1e3
        agent = f"switch{n}"
        first = rt.deploy(agent, [(names[-1], 1.0)])  # something else live first
        dep = rt.deploy(agent, stack.name)
        state_new, state_old = LiveState(dep.deployment, prepared), rt.live(agent)
        states = [state_old, state_new]
        counter = iter(range(10**9))
        switch_s = timeit(lambda: rt._switch(agent, states[next(counter) % 2]), 2001)
        rt._switch(agent, state_new)
        rollbacks = []
        for _ in range(20):  # rollback is timed alone; the redeploy that undoes it is not
            t0 = time.perf_counter()
            rt.rollback(agent)
            rollbacks.append(time.perf_counter() - t0)
            rt.deploy(agent, stack.name)
        rollback_s = statistics.median(rollbacks)
        res[str(n)] = {"load_from_disk_ms": load_ms, "prepare_cached_ms": prep_cached_ms,
                       "switch_us": switch_s * 1e6, "rollback_to_previous_ms_incl_registry": rollback_s * 1e3,
                       "stack_mb": prepared.nbytes / 1e6, "first_deploy": first.deployment.seq}
    return res


def _decode(chat: Any, pinned: Any, ids: list[int], params: Any) -> int:
    """Tokens decoded, with the stack bound around each step as ChatLocalModel does."""
    steps = chat._generate_ids(pinned.handle, list(ids), params)
    count = 0
    while True:
        with pinned.bound():
            if next(steps, None) is None:
                return count
        count += 1


def bench_decode(rt: Any, names: list[str], tokens: int) -> dict[str, Any]:
    from agent_sleep.adapters.stack import prepare_stack

    res: dict[str, Any] = {}
    for n in (0, 1, 3, 8):
        for combine in (("cat",) if n <= 1 else ("sum", "cat")):
            items = [(x, rt._adapter_layers(x), 1.0) for x in names[:n]]
            stack = prepare_stack(f"d{n}{combine}", items, combine=combine) if n else None
            rt.hooks.ensure(list(stack.layers) if stack else [])
            pinned = rt.pinned(stack)
            handle = pinned.handle
            text = handle.tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the sea."}],
                                                        add_generation_prompt=True, tokenize=False)
            ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"]
            from agent_sleep.runtime.chat_model import ChatLocalModel, GenerationParams

            chat = ChatLocalModel(handle=handle, max_new_tokens=tokens)
            params = GenerationParams(max_new_tokens=tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
                                      seed=None)
            _decode(chat, pinned, ids, GenerationParams(4, 0.0, 1.0, 1.0, None))  # warm-up
            t0 = time.perf_counter()
            got = _decode(chat, pinned, ids, params)
            res[f"{n}_{combine}"] = got / (time.perf_counter() - t0)
    return res


def load_test(rt: Any, names: list[str], swaps: int, tokens: int) -> dict[str, Any]:
    import openai

    from agent_sleep.serving.live_resolver import LiveResolver
    from agent_sleep.serving.server import ServerThread

    agent = "loadtest"
    targets = [[(names[0], 1.0)], [(x, 1.0) for x in names[1:4]], [(x, 0.7) for x in names[:8]]]
    reference: dict[str, dict[str, str]] = {}
    for t in targets:
        out = rt.deploy(agent, t)
        stack_name = out.deployment.stack.name
        chat = rt.chat_model(agent, max_new_tokens=tokens)
        reference[stack_name] = {p: chat.invoke(p).text for p in PROMPTS}
    distinct = len({json.dumps(v, sort_keys=True) for v in reference.values()})
    stack_names = list(reference)

    results: list[tuple[str, str, str, float]] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop(k: int, ask: Any) -> None:
        """Send prompts until stopped; ``ask(prompt)`` returns (stack it ran on, text)."""
        i = k
        while not stop.is_set():
            p = PROMPTS[i % len(PROMPTS)]
            i += 1
            t0 = time.perf_counter()
            try:
                stack, text = ask(p)
                with lock:
                    results.append((stack, p, text, time.perf_counter() - t0))
            except Exception as exc:  # counted, not raised: the load test reports failures
                failures.append(repr(exc))

    def in_process(k: int) -> None:
        chat = rt.chat_model(agent, max_new_tokens=tokens)

        def ask(p: str) -> tuple[str, str]:
            r = chat.invoke(p)
            return r.response_metadata["stack"], r.text

        client_loop(k, ask)

    def http(k: int, base_url: str) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=120)

        def ask(p: str) -> tuple[str, str]:
            r = client.chat.completions.create(model=agent, messages=[{"role": "user", "content": p}],
                                               max_tokens=tokens, temperature=0)
            return r.system_fingerprint.split("#")[0], r.choices[0].message.content or ""

        client_loop(k, ask)

    with ServerThread(LiveResolver(rt, max_new_tokens=tokens)) as server:
        threads = [threading.Thread(target=in_process, args=(k,)) for k in range(3)]
        threads += [threading.Thread(target=http, args=(k, server.base_url)) for k in range(3)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        switch_times = []
        i = 0
        # At least `swaps` changes, and keep swapping until enough requests completed to judge mixing.
        while i < swaps or (len(results) < 60 and time.perf_counter() - t_start < 600):
            t0 = time.perf_counter()
            if i % 4 == 3:
                rt.rollback(agent, reason="load test")
            else:
                rt.deploy(agent, stack_names[i % 3])
            switch_times.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
    mixed = [(s, p) for s, p, text, _ in results if reference.get(s, {}).get(p) != text]
    return {
        "swaps": len(switch_times), "requests": len(results), "failed": len(failures), "mixed_or_wrong": len(mixed),
        "distinct_reference_outputs": distinct, "stacks_seen": sorted({s for s, *_ in results}),
        "requests_per_s": len(results) / elapsed, "seconds": elapsed,
        "median_request_s": statistics.median(r[3] for r in results) if results else None,
        "median_deploy_or_rollback_ms": statistics.median(switch_times) * 1e3,
        "failures_sample": failures[:3],
    }


def main() -> None:
    from evals.record import write_results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=6, help="greedy tokens per load-test request")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--skip-load-test", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "evals" / "results" / "runtime.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from agent_sleep.config import Settings
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    handle = load_base_model()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data")
        registry = AdapterRegistry(ExperienceStore(settings=settings))
        names = [registry.register(f, f"skill{k}").name for k, f in enumerate(make_adapters(handle, Path(tmp), 8))]
        rt = LiveRuntime(registry, handle=handle)
        t0 = time.perf_counter()
        rt.deploy("validate", names[0])
        validate_ms = (time.perf_counter() - t0) * 1e3
        results = {"validate_and_deploy_one_adapter_ms": validate_ms,
                   "switch": bench_switch(rt, names),
                   "decode_tok_s": bench_decode(rt, names, args.decode_tokens),
                   "load_test": None if args.skip_load_test else load_test(rt, names, args.swaps, args.tokens)}
    write_results(args.out, results)

    print("| stack | load from disk | prepare (cached) | switch (prepared → live) | rollback to previous (incl. registry write) |")
    print("|---|---|---|---|---|")
    for n, r in results["switch"].items():
        print(f"| {n} × rank-8 q,v | {r['load_from_disk_ms']:.1f} ms | {r['prepare_cached_ms']:.1f} ms | "
              f"{r['switch_us']:.2f} µs | {r['rollback_to_previous_ms_incl_registry']:.1f} ms |")
    d = results["decode_tok_s"]
    print("\n| adapters active | separate (sum) | one adapter (rank-cat) |\n|---|---|---|")
    for n in (0, 1, 3, 8):
        print(f"| {n} | {d.get(f'{n}_sum', d.get(f'{n}_cat')):.1f} tok/s | {d[f'{n}_cat']:.1f} tok/s |")
    lt = results["load_test"]
    if lt:
        print(f"\nload test: {lt['swaps']} swaps/rollbacks, {lt['requests']} requests (3 in-process threads + 3 "
              f"HTTP clients), {lt['failed']} failed, {lt['mixed_or_wrong']} mixed/wrong, "
              f"{lt['requests_per_s']:.2f} req/s, median deploy/rollback {lt['median_deploy_or_rollback_ms']:.1f} ms, "
              f"stacks seen {lt['stacks_seen']}, distinct reference outputs {lt['distinct_reference_outputs']}/3")
    print(f"validate + deploy one adapter: {validate_ms:.0f} ms\nwrote {args.out}")


if __name__ == "__main__":
    main()
