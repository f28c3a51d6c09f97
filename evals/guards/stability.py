"""Which guard items measure forgetting, and which only measure greedy decoding's knife edge.

A guard item is worth its place in the gate only if a change that teaches the model nothing leaves it
alone. This script scores every shipped guard item (``evals/guards/*.jsonl``) under ``--seeds`` random
LoRA adapters (rank 8 on all seven projections of every layer, A and B Gaussian, B rescaled so that the
adapter's largest relative weight change, the deploy validation's ``delta_norm``, is ``--norm``), and
records per item how many of them flip it from right to wrong. Random directions carry no knowledge and
no skill: an item they flip is one a real candidate can flip by chance, and counting it as lost general
ability makes the gate reject adapters for noise.

To run:  HF_HUB_OFFLINE=1 .venv/bin/python evals/guards/stability.py [--seeds 2] [--norm 0.15] [--apply]

Writes ``evals/guards/stability.json`` (per item: flips of how many perturbations, and each perturbed
reply). ``--apply`` rewrites the guard files without the items any perturbation flipped or the base model
itself now gets wrong (the dropped ids are listed in ``stability.json``), so the gate's seeded samples come from the stable items.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_adapter(handle: Any, dest: Path, *, seed: int, norm: float, rank: int = 8) -> Path:
    """A random rank-``rank`` LoRA on every projection whose worst relative weight change is ``norm``."""
    import torch

    from agent_sleep.adapters.artifact import read_adapter, write_adapter
    from agent_sleep.adapters.lora_config import peft_key
    from agent_sleep.adapters.manifest import AdapterManifest
    from agent_sleep.adapters.validation import validate_adapter

    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, module in handle.model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            tensors[peft_key(name, "A")] = torch.randn(rank, module.in_features, generator=g) / module.in_features ** 0.5
            tensors[peft_key(name, "B")] = torch.randn(module.out_features, rank, generator=g) * 0.01
    config = {"r": rank, "lora_alpha": float(rank), "target_modules": list(TARGETS)}
    manifest = AdapterManifest(skill="noise", version=1, generator={"name": "random", "version": "1"},
                               base_model={"id": handle.spec, "content_hash": handle.content_hash},
                               sources={"description": f"random LoRA, seed {seed}, delta norm {norm}"})  # fmt: skip
    probe = write_adapter(dest.with_name(dest.name + "-probe"), tensors, config, manifest)
    worst = next(c.value for c in validate_adapter(read_adapter(probe), handle, max_delta_norm=1e9).checks
                 if c.name == "delta_norm")  # fmt: skip
    scale = (norm / float(worst)) if worst else 1.0
    for key in tensors:
        if key.endswith("lora_B.weight"):
            tensors[key] = tensors[key] * scale
    return write_adapter(dest, tensors, config, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="random adapters to score every item under")
    parser.add_argument("--norm", type=float, default=0.15, help="each random adapter's delta_norm")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed+seeds-1 (fresh seeds check a filtered set's residual noise)")
    parser.add_argument("--out", type=Path, default=None, help="the report's path (default: next to this script)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--apply", action="store_true", help="drop every item a perturbation flipped")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the gate's seeded sample of this many items per suite (guard_suites(limit=N))")
    args = parser.parse_args(argv)
    if args.apply and args.limit is not None:
        parser.error("--apply rewrites the whole files: measure every item (no --limit)")

    import torch

    from agent_sleep.config import Settings
    from agent_sleep.evaluation.lm_eval import LmEvalEvaluator, replies
    from agent_sleep.evaluation.suites import load_suites
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore

    torch.set_num_threads(args.threads)
    suites = [s.sample(args.limit) for s in load_suites(HERE, prefix="guards_")]
    tmp = Path(tempfile.mkdtemp(prefix="guard-stability-"))
    store = ExperienceStore(settings=Settings(data_dir=tmp / "data"))
    registry = AdapterRegistry(store)
    runtime = LiveRuntime(registry, validate=False)
    evaluator = LmEvalEvaluator(runtime, suites, tmp / "eval", batch_size=args.batch_size)
    started = time.perf_counter()
    base = evaluator.evaluate_suites([])
    flips: dict[str, list[dict[str, Any]]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        folder = random_adapter(runtime.handle, tmp / "adapters" / f"noise{seed}", seed=seed, norm=args.norm)
        rec = registry.register(folder, f"noise{seed}")
        scored = evaluator.evaluate_suites([(rec.name, 1.0)])
        for name, result in scored.items():
            said = replies(result)
            for item, score in result.scores.items():
                if base[name].scores[item] == 1.0 and score < 1.0:
                    flips.setdefault(item, []).append({"seed": seed, "reply": said[item]})
        print(f"seed {seed}: {sum(1 for v in flips.values() if any(f['seed'] == seed for f in v))} items flipped "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    total = sum(len(s.items) for s in suites)
    base_wrong = sorted(i for r in base.values() for i, score in r.scores.items() if score < 1.0)
    report = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python evals/guards/stability.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model_content_hash": runtime.handle.content_hash, "seeds": args.seeds, "norm": args.norm, "limit": args.limit,
        "items": total, "flipped": len(flips), "base_wrong": base_wrong, "seconds": round(time.perf_counter() - started, 1),
        "per_suite": {s.name: {"items": len(s.items), "flipped": sum(1 for i in s.items if i.id in flips)}
                      for s in suites},
        "flips": flips,
    }  # fmt: skip
    if args.apply:
        for suite in suites:
            path = HERE / f"{suite.name.removeprefix('guards_')}.jsonl"
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [r for r in rows if r["id"] not in flips and r["id"] not in base_wrong]
            path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in kept),
                            encoding="utf-8")  # fmt: skip
        report["applied"] = True
    out = args.out or HERE / ("stability.json" if args.limit is None else f"stability_limit{args.limit}_norm{args.norm:g}.json")
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "flips"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
