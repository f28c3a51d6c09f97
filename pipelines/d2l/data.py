"""Tokenised, cached training data for D2L meta-training.

Per document: its features (hidden states after ``encoder_layers`` blocks of
the frozen base model, fp16) and, per question, the prompt+answer token ids
and the hidden states entering the first LoRA layer (fp16). Both are
independent of the hypernetwork, so they are computed once (``torch.no_grad``,
batched) and saved with ``torch.save`` under a key that names everything
they depend on.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from agent_sleep.generators.backbone import hidden_after
from agent_sleep.generators.prompts import answer_ids, styled_prompt

__all__ = ["CachedDoc", "attach_answer_positions", "build_cache", "cache_key", "pad_right", "value_positions"]

# {"id", "feats": [T, H] fp16, "value_pos": [token positions of stated values],
#  "qa": [{"ids", "n_prompt", "hidden", "answer", "question"}]}
CachedDoc = dict[str, Any]


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pad_right(seqs: Sequence[Tensor], value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Stack ``[T_i, ...]`` tensors into ``[N, T_max, ...]`` plus a ``[N, T_max]`` 0/1 mask."""
    t = max(int(s.shape[0]) for s in seqs)
    out = seqs[0].new_full((len(seqs), t, *seqs[0].shape[1:]), value)
    mask = torch.zeros(len(seqs), t, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def value_positions(tokenizer: Any, text: str, spans: Sequence[Sequence[int]], max_tokens: int) -> list[int]:
    """Positions (below ``max_tokens``) of the tokens of ``text`` that overlap any character span ``[start, end)``.

    Uses the fast tokenizer's offsets; otherwise counts the tokens of the text before and through each span.
    """
    if not spans:
        return []
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [i for i, (a, b) in enumerate(offsets[:max_tokens]) if any(a < e and s < b for s, e in spans)]

    def count(prefix: str) -> int:
        return len(tokenizer(prefix, add_special_tokens=False)["input_ids"])

    out: set[int] = set()
    for s, e in spans:
        first = count(text[:s])
        out.update(range(first, max(first + 1, count(text[:e]))))
    return sorted(i for i in out if i < max_tokens)


def attach_answer_positions(cached: Sequence[CachedDoc], docs: Sequence[dict[str, Any]], tokenizer: Any, *,
                            qa_keys: Sequence[str], max_doc_tokens: int) -> int:
    """Give every cached question of ``docs`` its ``answer_pos``: the position of the document token where its
    answer first appears (the first accepted answer found verbatim, then in any case), None where the answer is
    not in the document's first ``max_doc_tokens`` tokens. ``cached`` is :func:`build_cache`'s result for ``docs``
    with the same ``qa_keys`` (questions in the same order). Returns how many questions got a position.

    Kept beside the cache, not in it: computed in milliseconds from the text, so older caches stay valid.
    """
    found = 0
    for doc, c in zip(docs, cached, strict=True):
        qas = [qa for key in qa_keys for qa in doc.get(key, [])]
        if len(qas) != len(c["qa"]):
            raise ValueError(f"document {doc['id']}: {len(qas)} questions, the cache holds {len(c['qa'])}")
        text = doc["text"]
        for qa, row in zip(qas, c["qa"], strict=True):
            answers = [qa["answer"]] if isinstance(qa["answer"], str) else list(qa["answer"])
            at = next((i for a in answers if a and (i := text.find(a)) >= 0), -1)
            if at < 0:
                at = next((i for a in answers if a and (i := text.lower().find(a.lower())) >= 0), -1)
            first = value_positions(tokenizer, text, [(at, at + 1)], max_doc_tokens) if at >= 0 else []
            pos = first[0] if first else None
            row["answer_pos"] = pos
            found += pos is not None
    return found


@torch.no_grad()
def _hidden(model: Any, seqs: list[Tensor], n_layers: int, device: Any, batch: int) -> list[Tensor]:
    out: list[Tensor] = []
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    result: dict[int, Tensor] = {}
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        ids, mask = pad_right([seqs[i].to(device) for i in idx])
        h = hidden_after(model, ids, mask, n_layers)
        for row, i in enumerate(idx):
            result[i] = h[row, : len(seqs[i])].to("cpu", torch.float16)
    out = [result[i] for i in range(len(seqs))]
    return out


def build_cache(model: Any, tokenizer: Any, docs: Sequence[dict[str, Any]], *, encoder_layers: int,
                first_lora_layer: int, max_doc_tokens: int, device: Any, path: Path,
                qa_keys: Sequence[str] = ("qa",), batch: int = 16, desc: str = "cache",
                prompt_styles: Sequence[str] = ("bare",)) -> list[CachedDoc]:  # fmt: skip
    """Features and question states for ``docs``, loaded from ``path`` if already there.

    Each question is asked in one of ``prompt_styles`` (:func:`agent_sleep.generators.prompts.styled_prompt`),
    picked by a hash of its text: deterministic, and with the default ``("bare",)`` exactly the bare ChatML prompt.
    """
    if path.exists():
        return torch.load(path, weights_only=False)
    # a document listed several times (DataConfig.written_repeat) is computed once and shared
    slot: dict[str, int] = {}  # document id -> its position in ``unique``
    unique: list[dict[str, Any]] = []
    for d in docs:
        if d["id"] not in slot:
            slot[d["id"]] = len(unique)
            unique.append(d)
    doc_ids = [torch.tensor(tokenizer(d["text"], add_special_tokens=False)["input_ids"][:max_doc_tokens])
               for d in unique]  # fmt: skip
    rows: list[tuple[int, dict[str, Any], Tensor, int]] = []
    for di, doc in enumerate(unique):
        for key in qa_keys:
            for qa in doc.get(key, []):
                h = zlib.crc32(qa["question"].encode("utf-8"))
                style = prompt_styles[h % len(prompt_styles)]
                text = styled_prompt(tokenizer, qa["question"], style, pick=h // len(prompt_styles))
                prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
                # several accepted answers (hand-written pages): the first is the training target
                target = qa["answer"] if isinstance(qa["answer"], str) else qa["answer"][0]
                ids = torch.tensor(prompt + answer_ids(tokenizer, target))
                rows.append((di, qa, ids, len(prompt)))
    bar = tqdm(total=2, desc=desc, leave=False)
    feats = _hidden(model, doc_ids, encoder_layers, device, batch)
    bar.update()
    hidden = _hidden(model, [r[2] for r in rows], first_lora_layer, device, batch * 2)
    bar.update()
    bar.close()
    cached: list[CachedDoc] = [
        {"id": d["id"], "feats": f, "qa": [],
         "value_pos": value_positions(tokenizer, d["text"], list(d.get("spans", {}).values()), max_doc_tokens)}
        for d, f in zip(unique, feats, strict=True)
    ]  # fmt: skip
    for (di, qa, ids, n_prompt), h in zip(rows, hidden, strict=True):
        cached[di]["qa"].append({"ids": ids, "n_prompt": n_prompt, "hidden": h, "question": qa["question"],
                                 "answer": qa["answer"]})  # fmt: skip
    if len(unique) < len(docs):  # pickling keeps the sharing: a repeated document is stored once
        cached = [cached[slot[d["id"]]] for d in docs]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(cached, tmp)
    os.replace(tmp, path)
    return cached
