"""The teacher of amortised context distillation: the frozen base model with the document in its prompt.

Sakana's D2L (arXiv 2602.15902) meta-trains the hypernetwork towards what the base model says *with* the
document in context: per question, the teacher's top-k log-probabilities on each answer token are computed once
and cached, and the student (base + generated LoRA, question only) is pulled towards them
(:func:`pipelines.d2l.objective.topk_kl`). Here the answer is the gold answer in D2L's prompt format
(:func:`agent_sleep.generators.prompts.question_prompt` + :func:`~agent_sleep.generators.prompts.answer_ids`), so
teacher and student score the same answer tokens; the teacher's prompt is the student's with the document (cut to
``max_doc_tokens`` tokens, what the hypernetwork reads) before the question, the layout of ``bench_d2l``'s
condition (c).

The cache is one file per document under a folder, named by a hash of everything the numbers depend on (the base
model's content hash, the document as the teacher reads it, its questions and answers, k, this module's
version): a killed build resumes where it stopped, and runs share files. A document's questions share its prompt
prefix, so the prefix runs once and its KV cache is repeated over the questions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import Tensor
from tqdm import tqdm

from agent_sleep.generators.prompts import answer_ids, question_prompt

__all__ = ["TEACHER_VERSION", "Teacher", "build_teacher_cache", "teacher_key", "teacher_sequence", "teacher_topk"]

TEACHER_VERSION = 1


class Teacher(TypedDict):
    """Top-k of the teacher at each answer token (the end-of-turn token included): ``[n_answer, k]`` each."""

    logp: Tensor  # float16 log-probabilities, descending
    idx: Tensor  # int32 token ids


def _doc_for_teacher(tokenizer: Any, text: str, max_doc_tokens: int | None) -> str:
    if max_doc_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_doc_tokens else tokenizer.decode(ids[:max_doc_tokens])


def teacher_sequence(tokenizer: Any, doc: str, question: str, answer: str) -> tuple[list[int], int]:
    """(prompt + answer token ids, prompt length) of the teacher: the document before the question."""
    prompt = tokenizer(question_prompt(tokenizer, question, doc), add_special_tokens=False)["input_ids"]
    return list(prompt) + answer_ids(tokenizer, answer), len(prompt)


def teacher_key(*, model_hash: str, doc: str, qas: Sequence[tuple[str, str]], top_k: int) -> str:
    parts = {"v": TEACHER_VERSION, "model": model_hash, "doc": doc, "qas": [list(q) for q in qas], "k": top_k}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _cache_kwarg(model: Any) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def teacher_topk(model: Any, seqs: Sequence[tuple[list[int], int]], top_k: int, device: Any,
                 *, share_prefix: bool = True, batch: int = 8, pad_id: int = 0) -> list[Teacher]:  # fmt: skip
    """The top-``top_k`` next-token log-probabilities at every answer position of each ``(ids, n_prompt)``.

    ``share_prefix``: run the token prefix all sequences share once and reuse its KV cache (exact up to float
    rounding; the tests compare it with full forward passes).
    """
    if not seqs:
        return []
    prefix = 0
    if share_prefix and len(seqs) > 1:
        first = seqs[0][0]
        limit = min(n for _, n in seqs) - 1  # the logits of the last prompt token must come from the suffix pass
        while prefix < limit and all(ids[prefix] == first[prefix] for ids, _ in seqs):
            prefix += 1
    kwarg = _cache_kwarg(model)
    past = None
    if prefix:
        out = model(input_ids=torch.tensor([seqs[0][0][:prefix]], device=device), use_cache=True)
        past = getattr(out, kwarg)
    result: list[Teacher] = []
    for start in range(0, len(seqs), batch):
        part = seqs[start : start + batch]
        width = max(len(ids) - prefix for ids, _ in part)
        ids_t = torch.full((len(part), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(len(part), prefix + width, dtype=torch.long, device=device)
        mask[:, :prefix] = 1
        for r, (ids, _) in enumerate(part):
            ids_t[r, : len(ids) - prefix] = torch.tensor(ids[prefix:], device=device)
            mask[r, prefix : len(ids)] = 1
        kwargs: dict[str, Any] = {"input_ids": ids_t, "attention_mask": mask, "use_cache": past is not None}
        if past is not None:
            import copy

            cache = copy.deepcopy(past)
            cache.batch_repeat_interleave(len(part))
            kwargs[kwarg] = cache
            kwargs["position_ids"] = torch.arange(prefix, prefix + width, device=device)[None].expand(len(part), -1)
        logits = model(**kwargs).logits
        for r, (ids, n_prompt) in enumerate(part):
            rows = logits[r, n_prompt - 1 - prefix : len(ids) - 1 - prefix].float().log_softmax(-1)
            top = rows.topk(top_k, dim=-1)
            result.append({"logp": top.values.to(torch.float16).cpu(), "idx": top.indices.to(torch.int32).cpu()})
    return result


def build_teacher_cache(model: Any, tokenizer: Any, docs: Sequence[dict[str, Any]], *, model_hash: str,
                        folder: Path, top_k: int = 16, qa_keys: Sequence[str] = ("qa",),
                        max_doc_tokens: int | None = None, device: Any = "cpu",
                        desc: str = "teacher") -> list[list[Teacher]]:  # fmt: skip
    """Per document, per question (``qa_keys`` in order, as :func:`pipelines.d2l.data.build_cache` lists them),
    the teacher's top-k on the answer tokens; computed once per document and kept in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[Teacher]] = []
    for doc in tqdm(docs, desc=desc, leave=False):
        qas = [(qa["question"], qa["answer"]) for key in qa_keys for qa in doc.get(key, [])]
        text = _doc_for_teacher(tokenizer, doc["text"], max_doc_tokens)
        path = folder / f"{teacher_key(model_hash=model_hash, doc=text, qas=qas, top_k=top_k)}.pt"
        if path.exists():
            out.append(torch.load(path, weights_only=True))
            continue
        seqs = [teacher_sequence(tokenizer, text, q, a) for q, a in qas]
        entry = teacher_topk(model, seqs, top_k, device, pad_id=pad)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(entry, tmp)
        os.replace(tmp, path)
        out.append(entry)
    return out
