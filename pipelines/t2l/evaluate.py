"""Evaluate a T2L checkpoint on the synthetic suite: exact match and format compliance, against the baselines.

    .venv/bin/python pipelines/t2l/evaluate.py [CHECKPOINT] [--n 96] [--out FILE.json] [--no-generate]

For each split (``seen``: training tasks with held-out paraphrases and inputs; ``unseen_task``; ``unseen_family``)
and each condition, on the same examples:

* ``t2l``: the adapter generated from the example's own description, instruction not in the prompt;
* ``shuffled``: the adapter generated from another task's description (a collapsed, description-independent
  hypernetwork scores the same here as in ``t2l``; the difference is the steering margin);
* ``base``: the base model, no adapter, no instruction;
* ``instr``: the base model with the description in the prompt (what a 135M model reaches by prompting).

``exact`` is teacher-forced (= greedy output is exactly the target); ``comply`` is the share of greedy replies
that follow the behaviour's format (``Task.complies``; exact match after case folding for text procedures).
Default checkpoint: the committed one; the suite is rebuilt from the seed recorded in its training config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from agent_sleep.generators.backbone import RowLora
from agent_sleep.generators.t2l import DEFAULT_CHECKPOINT, T2LGenerator
from pipelines.t2l.objective import answer_scores, generate_replies
from pipelines.t2l.tasks import build_suite, shuffle_shift

__all__ = ["CONDITIONS", "score_checkpoint"]

CONDITIONS = ("t2l", "shuffled", "base", "instr")


def score_checkpoint(gen: T2LGenerator, *, n: dict[str, int], generate: bool = True, max_new_tokens: int = 32,
                     conditions: tuple[str, ...] = CONDITIONS, chunk: int = 32, seed: int | None = None,
                     salt: str = "evaluate") -> dict[str, Any]:  # fmt: skip
    """``{"split/condition/exact": share, "split/condition/comply": share, ..., "groups": {...}}`` for ``gen``.

    ``salt`` picks the examples (held-out templates and inputs always); the default differs from the trainer's
    eval set, which chose ``ckpt/best``, so these numbers carry no selection bias.
    """
    from agent_sleep.generators.checkpoint import read_checkpoint_config
    from agent_sleep.generators.t2l_net import T2L_FORMAT

    training: dict[str, Any] = {}
    if gen.checkpoint.exists():
        training = read_checkpoint_config(gen.checkpoint, fmt=T2L_FORMAT).get("training", {}).get("config", {})
    suite = build_suite(training.get("seed", 0) if seed is None else seed, training.get("heldout_share", 0.15))
    model, tok, hc = gen.handle.model, gen.handle.tokenizer, gen.config
    device = next(model.parameters()).device
    lora = RowLora(model, hc.module_names())
    out: dict[str, Any] = {"groups": {}}
    try:
        for split, count in n.items():
            examples = suite.eval_examples(split, count, salt=salt)
            texts = [ex.description for ex in examples]
            emb = gen.embed(texts).to(device)
            shift = shuffle_shift(examples)
            with torch.no_grad():
                own = gen.net(emb)
                other = gen.net(emb.roll(-shift, dims=0))
            for cond in conditions:
                weights = {"t2l": own, "shuffled": other}.get(cond)
                instr = cond == "instr"
                exact = []
                for lo in range(0, len(examples), chunk):
                    w = None if weights is None else {k: (a[lo : lo + chunk], b[lo : lo + chunk])
                                                      for k, (a, b) in weights.items()}  # fmt: skip
                    with torch.no_grad():
                        _, e = answer_scores(model, tok, lora, hc, examples[lo : lo + chunk], w, device,
                                             with_instruction=instr)  # fmt: skip
                    exact += e.tolist()
                out[f"{split}/{cond}/exact"] = sum(exact) / len(exact)
                if generate:
                    replies = generate_replies(model, tok, lora, hc, examples, weights, device, with_instruction=instr,
                                               max_new_tokens=max_new_tokens, batch=chunk)  # fmt: skip
                    ok = [ex.task.complies(r, ex.item) for ex, r in zip(examples, replies, strict=True)]
                    out[f"{split}/{cond}/comply"] = sum(ok) / len(ok)
                    out.setdefault("samples", {})[f"{split}/{cond}"] = [
                        {"task": ex.task.id, "q": ex.item.prompt, "target": ex.target, "reply": r}
                        for ex, r in list(zip(examples, replies, strict=True))[:4]]  # fmt: skip
                    groups: dict[str, list[bool]] = {}
                    for ex, k in zip(examples, ok, strict=True):
                        groups.setdefault(ex.task.group, []).append(k)
                    for g, v in groups.items():
                        out["groups"].setdefault(f"{split}/{g}", {})[cond] = round(sum(v) / len(v), 3)
            for metric in ("exact", "comply"):
                if f"{split}/t2l/{metric}" in out and f"{split}/shuffled/{metric}" in out:
                    out[f"{split}/margin/{metric}"] = out[f"{split}/t2l/{metric}"] - out[f"{split}/shuffled/{metric}"]
    finally:
        lora.remove()
    return out


def table(scores: dict[str, Any], splits: list[str]) -> str:
    """A markdown table: rows = conditions, columns = split x (exact, comply)."""
    metrics = [m for m in ("exact", "comply") if any(f"{s}/t2l/{m}" in scores for s in splits)]
    head = "| condition | " + " | ".join(f"{s} {m}" for s in splits for m in metrics) + " |"
    lines = [head, "|" + "---|" * (1 + len(splits) * len(metrics))]
    for cond in (*CONDITIONS, "margin"):
        cells = [scores.get(f"{s}/{cond}/{m}") for s in splits for m in metrics]
        if any(c is not None for c in cells):
            lines.append(f"| {cond} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--n", type=int, default=96, help="examples per split (default 96; unseen_family: half)")
    parser.add_argument("--out", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument("--no-generate", action="store_true", help="teacher-forced exact match only (fast)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from agent_sleep.models.loader import load_base_model

    start = time.perf_counter()
    handle = None
    if args.device:
        from agent_sleep.generators.checkpoint import read_checkpoint_config
        from agent_sleep.generators.t2l_net import T2L_FORMAT

        spec = read_checkpoint_config(args.checkpoint, fmt=T2L_FORMAT)["hyper"]["base_model_id"]
        handle = load_base_model(spec, device=args.device)
    gen = T2LGenerator.load(args.checkpoint, handle=handle)
    n = {"seen": args.n, "unseen_task": args.n, "unseen_family": max(1, args.n // 2)}
    scores = score_checkpoint(gen, n=n, generate=not args.no_generate)
    scores["seconds"] = time.perf_counter() - start
    scores["checkpoint"] = str(args.checkpoint)
    scores["n"] = n
    if args.out:
        args.out.write_text(json.dumps(scores, indent=2))
    print(table(scores, list(n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
