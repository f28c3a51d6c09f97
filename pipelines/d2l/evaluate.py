"""Held-out evaluation of a D2L checkpoint, with the controls that tell real internalisation from a prior.

    .venv/bin/python pipelines/d2l/evaluate.py agent_sleep/generators/checkpoints/d2l-smollm2-135m \
        --n-docs 48 --seed 1 [--attributes colour,town] [--n-facts 1,2] [--prose-share 0.5] [--json]

Greedy answer contains the gold answer, on held-out synthetic documents
(unseen entities; fact documents and, with ``--prose-share``, prose-like ones from
``pipelines/d2l/prose.py``), for: the base model without the document, base + the
document's D2L adapter, base + *another* document's adapter (shuffled: what
a document-independent prior alone scores), and the base model with the
document in context; per attribute too; with a chunk gate, its mean value on
the fact documents and on filler-only documents. Adapters go through the generator's
public path (:meth:`D2LGenerator.internalize`), so this also checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    import torch

    from agent_sleep.generators.backbone import RowLora
    from agent_sleep.generators.checkpoint import read_checkpoint_config
    from agent_sleep.generators.d2l import D2LGenerator
    from pipelines.d2l import synth
    from pipelines.d2l.trainer import DataConfig, greedy_accuracy, make_docs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--n-docs", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1, help="held-out seed (training evals use seed+1 = 1)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attributes", help="comma-separated attributes (default: the checkpoint's training data)")
    parser.add_argument("--n-facts", help="LO,HI facts per document (default: the checkpoint's training data)")
    parser.add_argument("--fact-hay", help="LO,HI haystack sentences per fact document (default: the checkpoint's)")
    parser.add_argument("--prose-share", type=float, help="share of prose-like documents (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = D2LGenerator.load(args.checkpoint)
    data = read_checkpoint_config(args.checkpoint).get("training", {}).get("config", {}).get("data", {})
    if args.attributes:
        data["attributes"] = [a.strip() for a in args.attributes.split(",") if a.strip()]
    if args.n_facts:
        data["n_facts"] = [int(v) for v in args.n_facts.split(",")]
    if args.fact_hay:
        data["fact_hay"] = [int(v) for v in args.fact_hay.split(",")]
    if args.prose_share is not None:
        data["prose_share"] = args.prose_share
    _, docs = make_docs(DataConfig.model_validate({**data, "n_train": 0}), args.seed - 1, n_eval=args.n_docs)
    results = [gen.internalize(d["text"]) for d in docs]
    a = torch.stack([torch.stack([r.layers[m][0] for m in gen.config.module_names()]) for r in results])
    b = torch.stack([torch.stack([r.layers[m][1] for m in gen.config.module_names()]) for r in results])
    hc, model, tok = gen.config, gen.handle.model, gen.handle.tokenizer
    lora = RowLora(model, hc.module_names())
    shift = torch.roll(torch.arange(len(docs)), 1)
    out: dict[str, object] = {"n_docs": len(docs), "n_questions": sum(len(d["qa"]) for d in docs),
                              "internalize_s_mean": sum(r.seconds for r in results) / len(results)}  # fmt: skip
    answers = {}
    for name, ab, ctx in [("base", None, False), ("d2l", (a, b), False), ("d2l_shuffled", (a[shift], b[shift]), False),
                          ("with_document", None, True)]:  # fmt: skip
        budget = max(32, args.max_new_tokens) if ctx else args.max_new_tokens  # in context it answers in sentences
        acc, answers[name] = greedy_accuracy(model, tok, lora, hc, docs, ab, "cpu", budget, ctx)
        out[f"acc_{name}"] = acc
    items = [(d, qa) for d in docs for qa in d["qa"]]  # greedy_accuracy's order
    hits = {name: [qa["answer"].lower() in text.lower() for (_, qa), text in zip(items, texts, strict=True)]
            for name, texts in answers.items()}  # fmt: skip

    def accuracy_by(key: Any) -> dict[str, dict[str, float]]:
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(key(*item), []).append(i)
        return {g: {name: sum(h[i] for i in idx) / len(idx) for name, h in hits.items()}
                for g, idx in sorted(groups.items())}  # fmt: skip

    out["per_attribute"] = accuracy_by(lambda d, qa: qa["attribute"])
    out["per_kind"] = accuracy_by(lambda d, qa: d["kind"])
    if hc.chunk_gate:  # how much of a chunk the adapter keeps: facts should stay open, filler should shut
        from agent_sleep.generators.backbone import hidden_after

        def mean_gate(texts: list[str]) -> float:
            values = []
            for text in texts:
                ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:256]])
                feats = hidden_after(model, ids, torch.ones_like(ids), hc.encoder_layers)
                values.append(gen.net.chunk_gates(feats.float()).item())
            return sum(values) / len(values)

        out["gate_fact_docs"] = mean_gate([d["text"] for d in docs])
        out["gate_filler_docs"] = mean_gate([h["text"] for h in synth.make_hay_docs(len(docs), args.seed + 99)])
    out["samples"] = [{"q": items[i][1]["question"], "gold": items[i][1]["answer"], "d2l": answers["d2l"][i]}
                      for i in range(min(6, len(items)))]  # fmt: skip
    lora.remove()
    print(json.dumps(out, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
