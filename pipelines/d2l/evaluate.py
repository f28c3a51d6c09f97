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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# base: no adapter; d2l: the document's own adapter; d2l_shuffled: the previous document's adapter (what a
# document-independent prior alone scores); with_document: no adapter, the document before the question.
CONDITIONS = ("base", "d2l", "d2l_shuffled", "with_document")


def heldout_docs(checkpoint: Path, n_docs: int, seed: int, **overrides: Any) -> list[dict[str, Any]]:
    """``n_docs`` held-out documents (unseen entities) drawn like the checkpoint's training data, with seed ``seed``
    (the trainer's own eval set is seed 1; hand-written pages, ``written_dirs`` / ``eval_written``, are left out);
    ``overrides`` replace data options (``attributes``, ``prose_share``...)."""
    from agent_sleep.generators.checkpoint import read_checkpoint_config
    from pipelines.d2l.trainer import DataConfig, make_docs

    data = read_checkpoint_config(checkpoint).get("training", {}).get("config", {}).get("data", {})
    # hand-written pages are a fixed corpus, not drawn: held-out documents come from the generators only
    data.update({"written_dirs": [], "eval_written": None}, **overrides)
    _, docs = make_docs(DataConfig.model_validate({**data, "n_train": 0}), seed - 1, n_eval=n_docs)
    return docs


@dataclass
class Scores:
    """Greedy answers to every question of ``docs`` under each condition, in document order, and their scores."""

    docs: list[dict[str, Any]]
    internalize_s: list[float]  # per document
    accuracy: dict[str, float]  # condition -> share of questions answered right
    answers: dict[str, list[str]]  # condition -> answers, one per question

    @property
    def items(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(d, qa) for d in self.docs for qa in d["qa"]]

    def hits(self) -> dict[str, list[bool]]:
        from agent_sleep.evaluation.answers import answer_matches

        return {name: [answer_matches(text, qa["answer"]) for (_, qa), text in zip(self.items, texts, strict=True)]
                for name, texts in self.answers.items()}  # fmt: skip

    def accuracy_by(self, key: Callable[[dict[str, Any], dict[str, Any]], str]) -> dict[str, dict[str, float]]:
        """Accuracy per condition within each group of questions, ``key(doc, qa)`` naming the group."""
        hits = self.hits()
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            groups.setdefault(key(*item), []).append(i)
        return {g: {name: sum(h[i] for i in idx) / len(idx) for name, h in hits.items()}
                for g, idx in sorted(groups.items())}  # fmt: skip


def score_checkpoint(gen: Any, docs: list[dict[str, Any]], *, conditions: Sequence[str] = CONDITIONS,
                     max_new_tokens: int = 16) -> Scores:  # fmt: skip
    """Internalise each document with ``gen`` (a :class:`D2LGenerator`) and answer its questions greedily under
    ``conditions`` (:data:`CONDITIONS`); the document in context gets at least 32 new tokens (it answers in
    sentences there)."""
    import torch

    from agent_sleep.generators.backbone import RowLora
    from pipelines.d2l.objective import greedy_accuracy

    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; choose from {list(CONDITIONS)}")
    results = [gen.internalize(d["text"]) for d in docs]
    a = torch.stack([torch.stack([r.layers[m][0] for m in gen.config.module_names()]) for r in results])
    b = torch.stack([torch.stack([r.layers[m][1] for m in gen.config.module_names()]) for r in results])
    hc, model, tok = gen.config, gen.handle.model, gen.handle.tokenizer
    shift = torch.roll(torch.arange(len(docs)), 1)
    setups = {"base": (None, False), "d2l": ((a, b), False), "d2l_shuffled": ((a[shift], b[shift]), False),
              "with_document": (None, True)}  # fmt: skip
    accuracy, answers = {}, {}
    lora = RowLora(model, hc.module_names())
    try:
        for name in conditions:
            ab, ctx = setups[name]
            budget = max(32, max_new_tokens) if ctx else max_new_tokens
            accuracy[name], answers[name] = greedy_accuracy(model, tok, lora, hc, docs, ab, gen.handle.device,
                                                            budget, ctx)  # fmt: skip
    finally:
        lora.remove()
    return Scores(docs=docs, internalize_s=[r.seconds for r in results], accuracy=accuracy, answers=answers)


def mean_gate(gen: Any, texts: list[str]) -> float:
    """Mean chunk gate of a chunk-gated checkpoint over ``texts`` (their first 256 tokens, one chunk each)."""
    import torch

    from agent_sleep.generators.backbone import hidden_after

    model, tok = gen.handle.model, gen.handle.tokenizer
    values = []
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:256]])
        feats = hidden_after(model, ids, torch.ones_like(ids), gen.config.encoder_layers)
        values.append(gen.net.chunk_gates(feats.float()).item())
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    import torch

    from agent_sleep.generators.d2l import D2LGenerator
    from pipelines.d2l import synth

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
    overrides: dict[str, Any] = {}
    if args.attributes:
        overrides["attributes"] = [a.strip() for a in args.attributes.split(",") if a.strip()]
    if args.n_facts:
        overrides["n_facts"] = [int(v) for v in args.n_facts.split(",")]
    if args.fact_hay:
        overrides["fact_hay"] = [int(v) for v in args.fact_hay.split(",")]
    if args.prose_share is not None:
        overrides["prose_share"] = args.prose_share
    docs = heldout_docs(args.checkpoint, args.n_docs, args.seed, **overrides)
    scores = score_checkpoint(gen, docs, max_new_tokens=args.max_new_tokens)
    out: dict[str, object] = {"n_docs": len(docs), "n_questions": len(scores.items),
                              "internalize_s_mean": sum(scores.internalize_s) / len(docs),
                              **{f"acc_{name}": acc for name, acc in scores.accuracy.items()}}  # fmt: skip
    out["per_attribute"] = scores.accuracy_by(lambda d, qa: qa["attribute"])
    out["per_kind"] = scores.accuracy_by(lambda d, qa: d["kind"])
    if gen.config.chunk_gate:  # how much of a chunk the adapter keeps: facts should stay open, filler should shut
        out["gate_fact_docs"] = mean_gate(gen, [d["text"] for d in docs])
        out["gate_filler_docs"] = mean_gate(gen, [h["text"] for h in synth.make_hay_docs(len(docs), args.seed + 99)])
    items = scores.items
    out["samples"] = [{"q": items[i][1]["question"], "gold": items[i][1]["answer"], "d2l": scores.answers["d2l"][i]}
                      for i in range(min(6, len(items)))]  # fmt: skip
    print(json.dumps(out, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
