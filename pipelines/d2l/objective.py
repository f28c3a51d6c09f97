"""What D2L meta-training optimises and how it measures it, on cached documents and questions.

The loss: cross-entropy of the gold answer tokens under the base model + a generated adapter, without the document
(:func:`qa_loss`, averaged per document by :func:`per_doc_mean`), plus the auxiliary pointer and gate losses. The
measure: greedy answers scored by :func:`agent_sleep.evaluation.answer_matches` (:func:`greedy_accuracy`). Adapters
are built as the generator builds them (:meth:`HyperNet.concat_chunks`). The loop, data and checkpoints live in
:mod:`pipelines.d2l.trainer`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from agent_sleep.evaluation.answers import answer_matches
from agent_sleep.generators.backbone import RowLora, logits_at, run_blocks
from agent_sleep.generators.hypernet import HyperConfig, HyperNet, HyperOutput
from agent_sleep.generators.prompts import question_prompt
from pipelines.d2l.data import CachedDoc, pad_right

__all__ = ["aux_losses", "chunk_loras", "doc_loras", "greedy_accuracy", "group_loras", "per_doc_mean", "qa_loss"]


def chunk_loras(net: HyperNet, docs: list[CachedDoc], device: Any) -> HyperOutput:
    """One LoRA per cached document (one chunk each), without the bias block, with its pointer and gate."""
    feats, mask = pad_right([d["feats"].to(device, torch.float32) for d in docs])
    return net.explain(feats, mask.bool())


def aux_losses(out: HyperOutput, docs: list[CachedDoc], n_fact: int) -> tuple[Tensor, Tensor]:
    """(pointer loss, gate loss) for chunks ``docs`` whose first ``n_fact`` state facts and the rest are filler.

    Pointer: per fact document, -log of each slot's attention mass on the value tokens (focus) plus -log of the
    mean attention each value token receives (coverage, so every digit of a number gets slots). Gate: binary
    cross-entropy towards 1 on fact documents and 0 on filler. Zero where the network has no pointer/gate.
    """
    zero = out.a.new_zeros(())
    ptr = zero
    if out.pointer is not None:
        terms = []
        for i in range(n_fact):
            pos = docs[i].get("value_pos") or []
            if pos:
                p = out.pointer[i][:, pos]  # [slots, P]
                terms.append(-(p.sum(-1) + 1e-6).log().mean() - (p.mean(0) + 1e-6).log().mean())
        ptr = torch.stack(terms).mean() if terms else zero
    gate = zero
    if out.gate is not None:
        target = torch.zeros_like(out.gate)
        target[:n_fact] = 1.0
        gate = F.binary_cross_entropy(out.gate.clamp(1e-6, 1 - 1e-6), target)
    return ptr, gate


def group_loras(net: HyperNet, a: Tensor, b: Tensor, groups: list[list[int]]) -> tuple[Tensor, Tensor]:
    """One adapter per group of chunk LoRAs (:meth:`HyperNet.concat_chunks`, as the generator does for the chunks
    of one document), zero-padded along rank to the largest group (padding ranks are exact no-ops).

    ``a [M, L, r, in]``, ``b [M, L, out, r]`` -> ``[G, L, R, in]``, ``[G, L, out, R]``.
    """
    adapters = [net.concat_chunks(a[members], b[members]) for members in groups]
    width = max(ga.shape[1] for ga, _ in adapters)
    a_out = torch.stack([F.pad(ga, (0, 0, 0, width - ga.shape[1])) for ga, _ in adapters])
    b_out = torch.stack([F.pad(gb, (0, width - gb.shape[2])) for _, gb in adapters])
    return a_out, b_out


def doc_loras(net: HyperNet, docs: list[CachedDoc], device: Any) -> tuple[Tensor, Tensor]:
    """One adapter per document (K = 1), bias block included."""
    out = chunk_loras(net, docs, device)
    return group_loras(net, out.a, out.b, [[i] for i in range(len(docs))])


def qa_loss(model: Any, lora: RowLora, hc: HyperConfig, ab: tuple[Tensor, Tensor] | None,
            rows: list[tuple[int, dict[str, Any]]], device: Any) -> Tensor:  # fmt: skip
    """Per-row mean CE over answer tokens, ``[N]``; ``ab`` None = the base model without an adapter."""
    h, mask = pad_right([qa["hidden"].to(device, torch.float32) for _, qa in rows])
    weights = None
    if ab is not None:
        idx = torch.tensor([d for d, _ in rows], device=device)
        weights = {name: (ab[0][idx, i], ab[1][idx, i]) for i, name in enumerate(hc.module_names())}
    with lora.use(weights, hc.scale):
        out = run_blocks(model, h, mask, hc.layers[0], model.config.num_hidden_layers)
    ri, pi, tgt, owner = [], [], [], []
    for r, (_, qa) in enumerate(rows):
        for j in range(qa["n_prompt"], len(qa["ids"])):
            ri.append(r)
            pi.append(j - 1)
            tgt.append(int(qa["ids"][j]))
            owner.append(r)
    logits = logits_at(model, out, (torch.tensor(ri, device=device), torch.tensor(pi, device=device)))
    ce = F.cross_entropy(logits.float(), torch.tensor(tgt, device=device), reduction="none")
    owner_t = torch.tensor(owner, device=device)
    sums = torch.zeros(len(rows), device=device).index_add(0, owner_t, ce)
    counts = torch.zeros(len(rows), device=device).index_add(0, owner_t, torch.ones_like(ce))
    return sums / counts


def per_doc_mean(values: Tensor, rows: list[tuple[int, dict[str, Any]]]) -> Tensor:
    docs = sorted({d for d, _ in rows})
    return torch.stack([values[[i for i, (d, _) in enumerate(rows) if d == doc]].mean() for doc in docs]).mean()


@torch.no_grad()
def greedy_accuracy(model: Any, tokenizer: Any, lora: RowLora, hc: HyperConfig, docs: list[dict[str, Any]],
                    ab: tuple[Tensor, Tensor] | None, device: Any, max_new_tokens: int,
                    with_context: bool = False, batch: int = 32,
                    adapter_of: list[int] | None = None) -> tuple[float, list[str]]:  # fmt: skip
    """Share of questions whose greedy answer matches the gold answer (:func:`answer_matches`: contains it, any case).

    Document ``i``'s questions use adapter ``ab[adapter_of[i]]`` (default: adapter ``i``).
    """
    items = [(di, qa) for di, d in enumerate(docs) for qa in d["qa"]]
    hits, answers = 0, []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            prompts = [question_prompt(tokenizer, qa["question"], docs[di]["text"] if with_context else None)
                       for di, qa in chunk]  # fmt: skip
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            weights = None
            if ab is not None:
                idx = torch.tensor([di if adapter_of is None else adapter_of[di] for di, _ in chunk], device=device)
                weights = {name: (ab[0][idx, i], ab[1][idx, i]) for i, name in enumerate(hc.module_names())}
            with lora.use(weights, hc.scale):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for (_, qa), text in zip(chunk, texts, strict=True):
                hits += answer_matches(text, qa["answer"])
                answers.append(text.strip())
    finally:
        tokenizer.padding_side = side
    return hits / max(1, len(items)), answers
