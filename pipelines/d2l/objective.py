"""What D2L meta-training optimises and how it measures it, on cached documents and questions.

The loss: cross-entropy of the gold answer tokens under the base model + a generated adapter, without the document
(:func:`qa_loss`, averaged per document by :func:`per_doc_mean`), plus the auxiliary pointer and gate losses, and
optionally amortised context distillation (:func:`cd_loss`: a top-k KL towards the base model *with* the document
in its prompt, cached by :mod:`pipelines.d2l.teacher`). The
measure: greedy answers scored by :func:`agent_sleep.evaluation.answer_matches` (:func:`greedy_accuracy`). Adapters
are built as the generator builds them (:meth:`HyperNet.concat_chunks`). The loop, data and checkpoints live in
:mod:`pipelines.d2l.trainer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from agent_sleep.evaluation.answers import answer_matches
from agent_sleep.generators.backbone import RowLora, logits_at, run_blocks
from agent_sleep.generators.hypernet import HyperConfig, HyperNet, HyperOutput
from agent_sleep.generators.prompts import question_prompt
from pipelines.d2l.data import CachedDoc, pad_right

__all__ = ["address_loss", "answer_logits", "aux_losses", "capture_inputs", "cd_loss", "chunk_loras", "doc_loras",
           "greedy_accuracy", "group_loras", "key_overlap", "per_doc_mean", "pointer_entropy", "qa_loss", "row_mean",
           "topk_kl"]


def chunk_loras(net: HyperNet, docs: list[CachedDoc], device: Any, *, position_keys: bool = False) -> HyperOutput:
    """One LoRA per cached document (one chunk each), without the bias block, with its pointer and gate."""
    feats, mask = pad_right([d["feats"].to(device, torch.float32) for d in docs])
    return net.explain(feats, mask.bool(), position_keys=position_keys)


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


def pointer_entropy(out: HyperOutput, docs: list[CachedDoc], n_fact: int) -> Tensor:
    """Mean entropy (nats) of each slot's pointer over its chunk, on the first ``n_fact`` chunks that state values.

    :func:`aux_losses`' coverage term is the same for slots that each rest on one value token and for slots that
    all spread evenly over the value (both give every token the same mean attention); a spread slot copies a blend
    of tokens and keys on a blend of their predecessors. Lowering this makes each slot pick one token: a table of
    (previous token -> token) entries, what copying a long value verbatim needs. Zero without a pointer.
    """
    if out.pointer is None:
        return out.a.new_zeros(())
    terms = [-(out.pointer[i] * (out.pointer[i] + 1e-9).log()).sum(-1).mean()
             for i in range(n_fact) if docs[i].get("value_pos")]
    return torch.stack(terms).mean() if terms else out.a.new_zeros(())


def key_overlap(out: HyperOutput, docs: list[CachedDoc], n_fact: int, *, nearest: bool = False) -> Tensor:
    """Mean squared positive cosine between the induction keys of different value tokens of a chunk
    (``nearest``: of each value token's key to its nearest other one, so the worst confusions weigh most).

    A slot copying value token j fires on its key, made from tokens j-1 (and j-2, ... with ``induction_order``);
    two value tokens after the same token ("27-13-89": both groups after a "-") get the same one-token key, so the
    copy jumps between them ("27-8-13"). Pushing the keys of a value's positions apart makes the higher-order maps
    carry the difference. Zero without position keys or where a chunk states fewer than two value tokens.
    """
    if out.position_keys is None:
        return out.a.new_zeros(())
    terms = []
    for i in range(n_fact):
        pos = docs[i].get("value_pos") or []
        if len(pos) > 1:
            k = F.normalize(out.position_keys[i, pos], dim=-1)
            sim = k @ k.T
            off = ~torch.eye(len(pos), dtype=torch.bool, device=sim.device)
            if nearest:
                terms.append(sim.masked_fill(~off, -1.0).max(-1).values.clamp_min(0).pow(2).mean())
            else:
                terms.append(sim[off].clamp_min(0).pow(2).mean())
    return torch.stack(terms).mean() if terms else out.a.new_zeros(())


@contextlib.contextmanager
def capture_inputs(model: Any, names: Sequence[str]) -> Iterator[list[Tensor]]:
    """While active, each forward pass through the modules ``names`` leaves their input (detached) in the yielded
    list, one entry per module in ``names`` order (the last pass wins): the down_proj inputs the LoRA rows see."""
    captured: list[Tensor] = [torch.empty(0)] * len(names)

    def keep(i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            captured[i] = args[0].detach()

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(i)) for i, n in enumerate(names)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def address_loss(out: HyperOutput, captured: Sequence[Tensor], rows: Sequence[tuple[int, dict[str, Any]]],
                 members: Sequence[Sequence[int]], *, tau: float = 0.1, min_mass: float = 0.05) -> Tensor:
    """Addressing: the A rows that fire on a question should be those of the slots that copy its answer.

    For question row ``r`` (``rows[r] = (chunk, qa)``, ``qa["answer_pos"]`` its answer's first token in that chunk),
    the student's live down_proj input where it predicts the answer's first token (``captured[l][r, n_prompt - 1]``,
    from :func:`capture_inputs` over the LoRA layers) is scored against every A row of the chunks in its adapter
    (``members[r]``, all layers and ranks; cosine / ``tau``). The target is where the slots point: each slot of the
    question's own chunk weighted by its pointer mass on the answer's first token (detached, normalised).
    Cross-entropy of the softmax over slots towards that target, averaged over the rows with a position whose
    slots put at least ``min_mass`` on it together (a token no slot rests on teaches nothing). The answer-token
    loss reaches a slot's A only through whether the right token came out; this says which slot should have fired.
    Zero without a pointer or positions.
    """
    zero = out.a.new_zeros(())
    if out.pointer is None:
        return zero
    n_layers, rank = out.a.shape[1], out.a.shape[2]
    terms = []
    for r, (chunk, qa) in enumerate(rows):
        pos = qa.get("answer_pos")
        if pos is None or pos >= out.pointer.shape[-1]:
            continue
        mass = out.pointer[chunk][:, pos].detach()  # [L*r]
        total = mass.sum()
        if total < min_mass:
            continue
        x = torch.stack([captured[layer][r, qa["n_prompt"] - 1] for layer in range(n_layers)])  # [L, d_in]
        cand = out.a[list(members[r])]  # [C, L, r, d_in]
        scores = F.cosine_similarity(cand, x[None, :, None, :].to(cand), dim=-1).flatten() / tau
        target = torch.zeros_like(scores)
        own = list(members[r]).index(chunk)
        target[own * n_layers * rank : (own + 1) * n_layers * rank] = mass / total
        terms.append(-(target * F.log_softmax(scores, dim=-1)).sum())
    return torch.stack(terms).mean() if terms else zero


def group_loras(net: HyperNet, a: Tensor, b: Tensor, groups: list[list[int]],
                without_bias: Collection[int] = ()) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One adapter per group of chunk LoRAs (:meth:`HyperNet.concat_chunks`, as the generator does for the chunks
    of one document), zero-padded along rank to the largest group (padding ranks are exact no-ops); the groups
    listed in ``without_bias`` get no bias block.

    ``a [M, L, r, in]``, ``b [M, L, out, r]`` -> ``[G, L, R, in]``, ``[G, L, out, R]``.
    """
    adapters = [net.concat_chunks(a[members], b[members], bias=gi not in without_bias)
                for gi, members in enumerate(groups)]  # fmt: skip
    width = max(ga.shape[1] for ga, _ in adapters)
    a_out = torch.stack([F.pad(ga, (0, 0, 0, width - ga.shape[1])) for ga, _ in adapters])
    b_out = torch.stack([F.pad(gb, (0, width - gb.shape[2])) for _, gb in adapters])
    return a_out, b_out


def doc_loras(net: HyperNet, docs: list[CachedDoc], device: Any) -> tuple[Tensor, Tensor]:
    """One adapter per document (K = 1), bias block included."""
    out = chunk_loras(net, docs, device)
    return group_loras(net, out.a, out.b, [[i] for i in range(len(docs))])


def answer_logits(model: Any, lora: RowLora, hc: HyperConfig, ab: tuple[Tensor, Tensor] | None,
                  rows: list[tuple[int, dict[str, Any]]], device: Any) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The student's logits at every answer position of ``rows`` ``[P, V]``, the answer token ids ``[P]`` and the
    row each position belongs to ``[P]``; ``ab`` None = the base model without an adapter."""
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
    return logits, torch.tensor(tgt, device=device), torch.tensor(owner, device=device)


def row_mean(values: Tensor, owner: Tensor, n_rows: int) -> Tensor:
    """Mean of per-position ``values`` over the positions of each row, ``[n_rows]``."""
    sums = torch.zeros(n_rows, device=values.device).index_add(0, owner, values)
    counts = torch.zeros(n_rows, device=values.device).index_add(0, owner, torch.ones_like(values))
    return sums / counts


def qa_loss(model: Any, lora: RowLora, hc: HyperConfig, ab: tuple[Tensor, Tensor] | None,
            rows: list[tuple[int, dict[str, Any]]], device: Any) -> Tensor:  # fmt: skip
    """Per-row mean CE over answer tokens, ``[N]``; ``ab`` None = the base model without an adapter."""
    logits, tgt, owner = answer_logits(model, lora, hc, ab, rows, device)
    return row_mean(F.cross_entropy(logits.float(), tgt, reduction="none"), owner, len(rows))


def topk_kl(student_logits: Tensor, teacher_logp: Tensor, teacher_idx: Tensor) -> Tensor:
    """Per-position KL(teacher || student) over the teacher's top-k tokens plus one bucket for all other tokens.

    ``student_logits [P, V]``, ``teacher_logp`` and ``teacher_idx`` ``[P, k]``. The student is normalised over
    the whole vocabulary; the teacher's remaining mass ``1 - sum(top-k)`` is compared with the student's mass
    outside those k tokens, so the value is >= 0 and 0 exactly when the two agree on the k tokens (Sakana's
    top-k truncated distillation, made a divergence: same gradient as its cross-entropy on the k tokens).
    """
    s_logp = F.log_softmax(student_logits.float(), dim=-1)
    idx = teacher_idx.long()
    s_top = s_logp.gather(1, idx)
    t_logp = teacher_logp.float()
    p = t_logp.exp()
    top = (p * (t_logp - s_top)).sum(-1)
    s_rest = s_logp.scatter(1, idx, float("-inf")).logsumexp(-1)
    p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
    rest = torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-12).log() - s_rest), torch.zeros_like(p_rest))
    return top + rest


def cd_loss(model: Any, lora: RowLora, hc: HyperConfig, ab: tuple[Tensor, Tensor] | None,
            rows: list[tuple[int, dict[str, Any]]], device: Any) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(per-row mean top-k KL towards the cached teacher, per-row mean answer-token CE), both ``[N]``, from one
    student pass over each row's ``ids`` (the gold answer, or the teacher's own answer in generated mode). A row
    needs its ``teacher`` entry (:func:`pipelines.d2l.teacher.teacher_topk` / ``teacher_generate``); a row whose
    ``teacher`` is None (generated mode, a question the teacher got wrong) gets KL 0 and only its CE counts."""
    logits, tgt, owner = answer_logits(model, lora, hc, ab, rows, device)
    with_teacher = [qa.get("teacher") is not None for _, qa in rows]
    if not any(with_teacher):
        zero = logits.new_zeros(len(rows))
        return zero, row_mean(F.cross_entropy(logits.float(), tgt, reduction="none"), owner, len(rows))
    t_logp = torch.cat([qa["teacher"]["logp"] for _, qa in rows if qa.get("teacher") is not None]).to(device)
    t_idx = torch.cat([qa["teacher"]["idx"] for _, qa in rows if qa.get("teacher") is not None]).to(device)
    if all(with_teacher):
        if t_logp.shape[0] != logits.shape[0]:
            raise ValueError(f"teacher covers {t_logp.shape[0]} answer tokens, the student {logits.shape[0]}")
        per_pos = topk_kl(logits, t_logp, t_idx)
    else:
        sel = torch.tensor(with_teacher, device=device)[owner]
        if t_logp.shape[0] != int(sel.sum()):
            raise ValueError(f"teacher covers {t_logp.shape[0]} answer tokens, the student {int(sel.sum())}")
        per_pos = torch.zeros(logits.shape[0], device=logits.device)
        per_pos = per_pos.masked_scatter(sel, topk_kl(logits[sel], t_logp, t_idx))
    kl = row_mean(per_pos, owner, len(rows))
    return kl, row_mean(F.cross_entropy(logits.float(), tgt, reduction="none"), owner, len(rows))


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
