"""Which description encoder separates the synthetic tasks better: MiniLM or the base model's mean-pooled state.

    .venv/bin/python pipelines/t2l/compare_encoders.py [--seed 0]

For every training task, the held-out paraphrases (templates 12-15) are matched to the centroids of every task's
training paraphrases (templates 0-11) by cosine similarity. Reports, per encoder: how often the nearest centroid is
the same task (of ~136) and the same group (family or composition type), the mean cosine to the own centroid, to
the nearest other task's centroid, and their gap (the steering signal a hypernetwork can use), and seconds taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from agent_sleep.generators.t2l import embed_descriptions
from pipelines.t2l.tasks import build_suite


def measure(encoder: str, handle: object | None, seed: int) -> dict[str, float]:
    suite = build_suite(seed)
    tasks = suite.of("train")
    train_txt = [t.description(i) for t in tasks for i in t.templates(held=False)]
    held_txt = [t.description(i) for t in tasks for i in t.templates(held=True)]
    start = time.perf_counter()
    e_train = embed_descriptions(encoder, train_txt, handle)  # type: ignore[arg-type]
    e_held = embed_descriptions(encoder, held_txt, handle)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    n_train, n_held = len(tasks[0].templates(held=False)), len(tasks[0].templates(held=True))
    cent = torch.nn.functional.normalize(e_train.view(len(tasks), n_train, -1).mean(1), dim=-1)
    sims = e_held @ cent.T  # [tasks * n_held, tasks]
    own = torch.arange(len(tasks)).repeat_interleave(n_held)
    nearest = sims.argmax(1)
    groups = [t.group for t in tasks]
    own_sim = sims[torch.arange(len(own)), own]
    other = sims.clone()
    other[torch.arange(len(own)), own] = -2.0
    return {"task_top1": (nearest == own).float().mean().item(),
            "group_top1": sum(groups[a] == groups[b] for a, b in zip(nearest.tolist(), own.tolist(), strict=True))
            / len(own), "cos_own": own_sim.mean().item(), "cos_nearest_other": other.max(1).values.mean().item(),
            "gap": (own_sim - other.max(1).values).mean().item(), "seconds": seconds,
            "descriptions": len(train_txt) + len(held_txt)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from agent_sleep.models.loader import load_base_model

    handle = load_base_model("smollm2-135m-instruct", device="cpu")
    out = {enc: measure(enc, handle, args.seed) for enc in ("all-minilm-l6-v2", "base-mean")}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
