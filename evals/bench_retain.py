"""What the sft retain term buys: the helpdesk's corrections learned, the guards kept.

To run:  HF_HUB_OFFLINE=1 .venv/bin/python evals/bench_retain.py [--weights 0 1 4] [--stack-weights 1 0.5]
         [--variant 'attn={"retain_weight": 1, "target_modules": ["q_proj", "v_proj"]}'] [--out FILE]

On SmolLM2-135M-Instruct in a throwaway store: the demo's day (``agent_sleep.demo.day.run_day``), then
``sft`` on the corrected conversations as the model saw them (its system prompt first, as the
selectors' ``prompts`` step gives them), bounded by steps (not seconds: timings on a shared machine
would give the variants different amounts of training), once per retain weight (``SFTSettings.retain_weight``; 0 is
plain sft), each adapter scored on
  * the held-out rephrasings of the facts the agent got wrong (never trained on), asked of the
    helpdesk agent (its system prompt, no documents in context), and
  * the guard suites as the gate sees them (``guard_suites(limit=16)``: 48 items, lm-eval).
The retain set (``agent_sleep/generators/data/retain.jsonl``) shares no question with the guards.
Writes evals/results/retain.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=float, nargs="*", default=[0.0, 1.0, 4.0])
    parser.add_argument("--steps", type=int, default=40, help="sft max_steps per adapter (it may converge sooner)")
    parser.add_argument("--budget", type=float, default=1200.0, help="sft time budget per adapter (s): a safety net")
    parser.add_argument("--retain-batch", type=int, default=4, help="retain sequences per step")
    parser.add_argument("--stack-weights", type=float, nargs="+", default=[1.0],
                        help="each adapter is also asked and scored at these stack weights")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help='more SFTSettings to try, e.g. attn=\'{"retain_weight": 1, "target_modules": ["q_proj"]}\'')
    parser.add_argument("--guard-limit", type=int, default=16, help="seeded items per guard suite; 0: every item")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "evals" / "results" / "retain.json")
    args = parser.parse_args(argv)

    import torch

    from agent_sleep.config import Settings
    from agent_sleep.demo.day import accuracy, ask, corrected_conversations, held_out, load_day, run_day
    from agent_sleep.evaluation.lm_eval import LmEvalEvaluator, replies
    from agent_sleep.evaluation.suites import guard_suites
    from agent_sleep.generators.sft import SFTGenerator, SFTSettings
    from agent_sleep.interfaces import GenerationRequest
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-retain-"))
    store = ExperienceStore(settings=Settings(data_dir=tmp / "data"))
    registry = AdapterRegistry(store)
    runtime = LiveRuntime(registry, validate=False)
    content = load_day()

    def chat(adapters: list[Any] | None = None) -> Any:
        return runtime.chat_model(adapters=adapters or None, max_new_tokens=48)

    day = run_day(chat(), store, content)
    probes = held_out(content, day.failed_facts)
    conversations = tuple(tuple(c) for c in corrected_conversations(store, day, content))
    log(f"day: {accuracy(day.answers)}; {len(conversations)} corrected conversations; {len(probes)} rephrasings")
    evaluator = LmEvalEvaluator(runtime, guard_suites(limit=args.guard_limit or None), tmp / "eval")

    def guards(adapters: list[Any]) -> dict[str, Any]:
        scores = evaluator.evaluate_suites(adapters)
        right = sum(sum(r.scores.values()) for r in scores.values())
        lost = []  # each item this stack gets wrong, with its reply: what the damage looks like
        for name, r in scores.items():
            said, asked = replies(r), {i.id: i.question for i in evaluator.suites[name].items}
            lost += [{"id": i, "question": asked[i], "reply": said[i]} for i, v in r.scores.items() if v < 1.0]
        return {"right": right, "of": sum(len(r.scores) for r in scores.values()),
                "per_suite": {n: round(r.metrics["accuracy"], 4) for n, r in scores.items()}, "wrong": lost}

    result: dict[str, Any] = {"max_steps": args.steps, "budget_s": args.budget, "conversations": len(conversations), "rephrasings": len(probes),
                              "retain_batch": args.retain_batch, "base": {"rephrasings": accuracy(ask(chat(), probes, content)), "guards": guards([])},
                              "variants": {}}  # fmt: skip
    log(f"base: {result['base']}")
    variants = [(f"{w:g}", {"retain_weight": w}) for w in args.weights]
    for spec in args.variant:
        name, _, raw = spec.partition("=")
        variants.append((name, json.loads(raw)))
    for label, knobs in variants:
        settings = SFTSettings(**{"max_steps": args.steps, "retain_batch_size": args.retain_batch, **knobs})
        weight = settings.retain_weight
        gen = SFTGenerator(runtime.handle, config=settings, progress=False)
        trained = gen.generate(GenerationRequest(conversations=conversations, budget_seconds=args.budget))
        skill = "v-" + "".join(c if c.isalnum() else "-" for c in label)
        rec = registry.register(gen.write(trained, tmp / "out" / skill, skill=skill), skill)
        for at in args.stack_weights:
            stack = [(rec.name, at)]
            row = {"training": trained.summary(), "stack_weight": at,
                   "rephrasings": accuracy(ask(chat(stack), probes, content)), "guards": guards(stack)}
            result["variants"][label + ("" if at == 1.0 else f"@{at:g}")] = row
            log(f"{label} (retain_weight {weight:g}) at stack weight {at:g}: {trained.steps} steps ({trained.stopped}), "
                f"ce {trained.final_loss:.4f}, kl {trained.retain_kl}; rephrasings {row['rephrasings']}; "
                f"guards {row['guards']['right']:g}/{row['guards']['of']} {row['guards']['per_suite']}")
            for w in row["guards"]["wrong"][:12]:
                log(f"    wrong {w['id']}: {w['reply'][:90]!r}")
    write_results(args.out, result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
