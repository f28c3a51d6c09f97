"""Does the helpdesk agent wake up better? The demo's content measured with the real model and generators.

To run:  HF_HUB_OFFLINE=1 .venv/bin/python evals/bench_demo_content.py [--sft-budgets 60 180] [--guard-limit 16]

On SmolLM2-135M-Instruct, in a throwaway store and registry (nothing from the consolidation run):
  1. the day (``agent_sleep.demo.day.run_day``): the helpdesk agent answers the day's questions,
     every conversation logged, wrong ones corrected; then the held-out rephrasings of the facts it
     got wrong, asked of the base model (no documents in context, nothing logged);
  2. ``sft`` on the corrected conversations (as the store recorded them), once per budget in
     ``--sft-budgets`` (default settings: it stops early once converged): steps, seconds, losses,
     and the day's failed questions and the rephrasings asked again with the adapter; the last
     budget's adapter also at stack weight 0.5; then ``sft`` on the corrections plus rehearsal
     (``replay_conversations``: the replay requests the base model gets right, its own replies);
  3. ``d2l`` on each document (one adapter per document), alone and stacked with ``sft``;
  4. harmful adapters: a d2l adapter at the largest weight a stack may use (4), and ``sft`` trained
     on corrections that all say "escalate to a human";
  5. the guard suites (``guard_suites(limit=--guard-limit)``, lm-eval) for the base model and each
     stack above, what the gate would see, plus ``sft`` at weight 0.03 as a noise floor (an
     adapter that changes no answer we ask still moves some guard items).
Writes evals/results/demo_content.json. The rephrasings are frozen content (see
``agent_sleep/demo/day/rephrasings.json``); they are never trained on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ESCALATE = "I cannot help with that. Please ask a human agent."


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sft-budgets", type=float, nargs="+", default=[30.0, 120.0])
    parser.add_argument("--replay-budget", type=float, default=240.0)
    parser.add_argument("--sft-lr", type=float, default=None, help="learning rate (default: SFTSettings')")
    parser.add_argument("--guard-limit", type=int, default=16, help="items per guard suite (3 suites)")
    parser.add_argument("--no-guards", action="store_true")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads while training (timed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads otherwise")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "demo_content.json")
    args = parser.parse_args(argv)

    import torch

    from agent_sleep.config import Settings
    from agent_sleep.demo.day import (
        accuracy,
        as_json,
        ask,
        corrected_conversations,
        held_out,
        load_day,
        replay_conversations,
        run_day,
    )
    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.generators.sft import SFTGenerator, SFTSettings
    from agent_sleep.interfaces import GenerationRequest
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    store = ExperienceStore(settings=Settings(data_dir=tmp / "data"))
    registry = AdapterRegistry(store)
    runtime = LiveRuntime(registry, validate=False)
    content = load_day()
    result: dict[str, Any] = {"content": {"questions": len(content.questions), "facts": len(content.facts),
                                          "rephrasings": sum(len(v) for v in content.rephrasings.values()),
                                          "documents": [d.source for d in content.documents]},
                              "threads": {"train": args.train_threads, "other": args.threads}}

    def chat(adapters: list[Any] | None = None) -> Any:
        return runtime.chat_model(adapters=adapters or None, max_new_tokens=args.max_new_tokens)

    # 1. the day, and the base model on the held-out rephrasings
    started = time.perf_counter()
    day = run_day(chat(), store, content)
    result["day"] = {"seconds": round(time.perf_counter() - started, 1), **accuracy(day.answers),
                     "failed_facts": list(day.failed_facts), "answers": as_json(day.answers)}
    log(f"day: {accuracy(day.answers)} in {result['day']['seconds']} s; failed facts {list(day.failed_facts)}")
    probes = held_out(content, day.failed_facts)
    failed_day = [(a.key, a.question) for a in day.failed]
    started = time.perf_counter()
    before = ask(chat(), probes, content)
    result["base"] = {"rephrasings": accuracy(before), "seconds": round(time.perf_counter() - started, 1),
                      "answers": as_json(before)}
    log(f"base on {len(probes)} held-out rephrasings: {accuracy(before)}")

    stacks: dict[str, list[Any]] = {"base": []}

    def measure(label: str, adapters: list[Any], *, day_questions: bool = True) -> dict[str, Any]:
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        model = chat(adapters)
        out: dict[str, Any] = {"adapters": [a if isinstance(a, str) else list(a) for a in adapters]}
        reph = ask(model, probes, content)
        out["rephrasings"] = accuracy(reph)
        out["rephrasing_answers"] = as_json(reph)
        if day_questions:
            again = ask(model, failed_day, content)
            out["day_failed_again"] = accuracy(again)
        out["seconds_to_ask"] = round(time.perf_counter() - started, 1)
        stacks[label] = adapters
        log(f"{label}: rephrasings {out['rephrasings']}" + (f", day's failed questions {out['day_failed_again']}"
                                                             if day_questions else ""))
        return out

    # 2. sft on the corrected conversations
    conversations = tuple(tuple(c) for c in corrected_conversations(store, day, content))
    sft_settings = SFTSettings(**({"lr": args.sft_lr} if args.sft_lr else {}))
    result["sft"] = {"conversations": len(conversations), "runs": {}}
    last = ""
    for budget in args.sft_budgets:
        torch.set_num_threads(args.train_threads)
        gen = SFTGenerator(runtime.handle, config=sft_settings, progress=False)
        trained = gen.generate(GenerationRequest(conversations=conversations, budget_seconds=budget))
        skill = f"corrections-{int(budget)}s"
        rec = registry.register(gen.write(trained, tmp / "out" / skill, skill=skill), skill)
        run = {"budget_s": budget, **trained.summary()}
        log(f"sft budget {budget:g} s: {trained.steps} steps, {trained.train_seconds:.1f} s training, "
            f"{trained.seconds:.1f} s in all, loss {trained.first_loss:.3f} -> {trained.final_loss:.4f}, "
            f"stopped: {trained.stopped}")
        run.update(measure(f"sft@{int(budget)}s", [rec.name]))
        result["sft"]["runs"][skill] = run
        last = rec.name
    result["sft"]["half_weight"] = measure("sft*0.5", [(last, 0.5)])

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    replay = tuple(tuple(c) for c in replay_conversations(chat(), content))
    replay_seconds = time.perf_counter() - started
    torch.set_num_threads(args.train_threads)
    gen = SFTGenerator(runtime.handle, config=sft_settings, progress=False)
    trained = gen.generate(GenerationRequest(conversations=conversations + replay, budget_seconds=args.replay_budget))
    rec = registry.register(gen.write(trained, tmp / "out" / "rehearsed", skill="rehearsed"), "rehearsed")
    log(f"sft + {len(replay)} replayed conversations ({replay_seconds:.1f} s to collect): {trained.steps} steps, "
        f"{trained.train_seconds:.1f} s, loss {trained.first_loss:.3f} -> {trained.final_loss:.4f}, {trained.stopped}")
    result["sft_rehearsed"] = {"replayed": len(replay), "of_replay_requests": len(content.replay),
                               "collect_seconds": round(replay_seconds, 1), "budget_s": args.replay_budget,
                               **trained.summary(), **measure("sft+rehearsal", [rec.name])}
    result["sft_rehearsed"]["half_weight"] = measure("sft+rehearsal*0.5", [(rec.name, 0.5)])

    # 3. d2l on each document
    d2l = D2LGenerator.load(handle=runtime.handle)
    result["d2l"] = {"documents": {}}
    d2l_names = []
    for doc in content.documents:
        made = d2l.generate(GenerationRequest(documents=(doc.text,)))
        skill = f"doc-{doc.id}"
        rec = registry.register(d2l.write(made, tmp / "out" / skill, skill=skill), skill, kind="d2l")
        d2l_names.append(rec.name)
        result["d2l"]["documents"][doc.id] = {"seconds": round(made.seconds, 3), "tokens": made.tokens,
                                              "chunks": made.chunks, "rank": made.rank}
        alone = ask(chat([rec.name]), held_out(content, [f for f, v in content.facts.items()
                                                          if v.topic == doc.id]), content)
        result["d2l"]["documents"][doc.id]["own_rephrasings"] = accuracy(alone)
        log(f"d2l {doc.id}: {made.tokens} tokens -> rank {made.rank} in {made.seconds:.2f} s; its own facts' "
            f"rephrasings {accuracy(alone)}")
    result["d2l"]["stacked"] = measure("d2l", d2l_names)
    result["sft+d2l"] = measure("sft+d2l", [last, *d2l_names])

    # 4. harmful adapters
    result["harmful"] = {}
    result["harmful"]["d2l_x4"] = measure("harmful d2l x4", [(d2l_names[0], 4.0)], day_questions=False)
    torch.set_num_threads(args.train_threads)
    poisoned = tuple((*c[:-1], {"role": "assistant", "content": ESCALATE}) for c in conversations)
    gen = SFTGenerator(runtime.handle, config=SFTSettings(), progress=False)
    trained = gen.generate(GenerationRequest(conversations=poisoned, budget_seconds=max(args.sft_budgets)))
    rec = registry.register(gen.write(trained, tmp / "out" / "escalate", skill="escalate"), "escalate")
    result["harmful"]["sft_escalate"] = {"steps": trained.steps, "train_seconds": round(trained.train_seconds, 1),
                                         "stopped": trained.stopped,
                                         **measure("harmful sft escalate", [rec.name], day_questions=False)}

    stacks["noise floor: sft*0.03"] = [(last, 0.03)]

    # 5. the guards, as the gate sees them
    if not args.no_guards:
        from agent_sleep.evaluation.lm_eval import LmEvalEvaluator
        from agent_sleep.evaluation.suites import guard_suites

        torch.set_num_threads(args.threads)
        suites = guard_suites(limit=args.guard_limit)
        evaluator = LmEvalEvaluator(runtime, suites, tmp / "eval")
        result["guards"] = {"limit_per_suite": args.guard_limit, "items": sum(len(s.items) for s in suites),
                            "stacks": {}}
        for label, adapters in stacks.items():
            started = time.perf_counter()
            scores = evaluator.evaluate_suites(adapters)
            right = sum(sum(r.scores.values()) for r in scores.values())
            items = sum(len(r.scores) for r in scores.values())
            result["guards"]["stacks"][label] = {
                "accuracy": round(right / items, 4), "right": right, "of": items,
                "per_suite": {n: round(r.metrics.get("accuracy", float("nan")), 4) for n, r in scores.items()},
                "seconds": round(time.perf_counter() - started, 1)}
            log(f"guards {label}: {right:g}/{items} in {result['guards']['stacks'][label]['seconds']} s")

    write_results(args.out, result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
