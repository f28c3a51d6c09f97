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
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import Tensor
from tqdm import tqdm

from agent_sleep.generators.prompts import answer_ids, question_prompt

__all__ = ["CUT_RULES", "GENERATED_VERSION", "TEACHER_VERSION", "GeneratedTeacher", "Teacher", "build_teacher_cache",
           "cut_answer", "end_of_turn_id", "sentence_cut", "stop_ids", "teacher_generate", "teacher_key",
           "teacher_sequence", "teacher_topk"]

TEACHER_VERSION = 1
GENERATED_VERSION = 1


class Teacher(TypedDict):
    """Top-k of the teacher at each answer token (the end-of-turn token included): ``[n_answer, k]`` each."""

    logp: Tensor  # float16 log-probabilities, descending
    idx: Tensor  # int32 token ids


class GeneratedTeacher(Teacher):
    """The teacher's own greedy answer: its tokens ``[n]`` (end-of-turn included when it stopped) and text."""

    ids: Tensor  # int32
    text: str


def stop_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an answer: the end-of-turn token of D2L's prompt format and the tokenizer's eos."""
    return {tokenizer.eos_token_id, *answer_ids(tokenizer, "")[-1:]} - {None}


# How a generated teacher answer is cut: "sentence" ends it after its first sentence (see sentence_cut).
CUT_RULES = ("sentence",)

# words whose trailing full stop does not end a sentence ("Dr. Ash", "9 a.m. on Monday", "approx. 4 km")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "no", "nr", "vs", "etc", "e.g", "i.e", "a.m",
                            "p.m", "approx", "inc", "ltd", "co", "jr", "sr", "mt", "ft", "dept", "est", "tel", "ext",
                            "fig", "ref", "vol", "pp", "ca"})  # fmt: skip
_SENTENCE_END = re.compile(r"(\S*)[.!?][\"')\]]*$")


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends an answer in D2L's prompt format (what the student learns to emit after it)."""
    ids = answer_ids(tokenizer, "")
    return ids[-1] if ids else tokenizer.eos_token_id


def sentence_cut(tokenizer: Any, ids: Sequence[int], stop: set[int] = frozenset()) -> int | None:  # type: ignore[assignment]
    """How many tokens of the answer ``ids`` make up its first sentence, or None if it has no sentence end
    followed by more text.

    A sentence ends after ``.``, ``!`` or ``?`` (closing quotes or brackets allowed) when the next token starts with
    whitespace (so ``66.46``, ``v2.1`` and ``q.e.d`` never end one) and is not a ``stop`` token (an answer that ends
    right there needs no cut), unless the word before a full stop is a known abbreviation or a single letter.
    """
    prev = tokenizer.decode(list(ids[:1]), skip_special_tokens=True)
    for k in range(1, len(ids)):
        nxt = tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=True)
        added = nxt[len(prev) :]
        if int(ids[k]) not in stop and added[:1].isspace():
            m = _SENTENCE_END.search(prev)
            if m and prev.strip():
                word = m.group(1).lower().rstrip(".")
                full_stop = prev.rstrip("\"')]").endswith(".")
                if not (full_stop and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()))):
                    return k
        prev = nxt
    return None


def cut_answer(entry: dict[str, Any], k: int, end_id: int) -> dict[str, Any]:
    """A generated teacher answer cut to its first ``k`` tokens plus the end-of-turn token ``end_id``.

    The top-k rows of the kept tokens are the teacher's own; the row of the appended end-of-turn is a designed
    target, all of its mass on ``end_id`` (log-probability 0; the other k-1 entries, the teacher's next
    candidates there, at -30), so KL and CE both teach the student to stop after the sentence. ``ids``, ``logp``
    and ``idx`` keep one row per answer token.
    """
    logp, idx = entry["logp"][:k], entry["idx"][:k]
    top_k = idx.shape[1]
    if k < len(entry["idx"]):
        others = [int(t) for t in entry["idx"][k].tolist() if int(t) != end_id][: top_k - 1]
    else:
        others = [int(t) for t in idx[-1].tolist() if int(t) != end_id][: top_k - 1]
    last_idx = torch.tensor([end_id, *others], dtype=idx.dtype)
    last_logp = torch.tensor([0.0] + [-30.0] * len(others), dtype=logp.dtype)
    ids = torch.cat([entry["ids"][:k], torch.tensor([end_id], dtype=entry["ids"].dtype)])
    return {**entry, "ids": ids, "logp": torch.cat([logp, last_logp[None]]), "idx": torch.cat([idx, last_idx[None]])}


def _doc_for_teacher(tokenizer: Any, text: str, max_doc_tokens: int | None) -> str:
    if max_doc_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_doc_tokens else tokenizer.decode(ids[:max_doc_tokens])


def teacher_sequence(tokenizer: Any, doc: str, question: str, answer: str) -> tuple[list[int], int]:
    """(prompt + answer token ids, prompt length) of the teacher: the document before the question."""
    prompt = tokenizer(question_prompt(tokenizer, question, doc), add_special_tokens=False)["input_ids"]
    return list(prompt) + answer_ids(tokenizer, answer), len(prompt)


def teacher_key(*, model_hash: str, doc: str, qas: Sequence[tuple[str, str]], top_k: int,
                max_new_tokens: int | None = None, cut: str | None = None) -> str:  # fmt: skip
    """Gold mode (``max_new_tokens`` None): the questions and gold answers; generated mode: the questions only (the
    answers are the teacher's), the answer budget and the cut rule (``cut`` None: uncut, the key of caches written
    before cut rules existed, so those stay valid for uncut recipes and are never read by a cutting one)."""
    if max_new_tokens is None:
        parts: dict[str, Any] = {"v": TEACHER_VERSION, "model": model_hash, "doc": doc, "qas": [list(q) for q in qas],
                                 "k": top_k}  # fmt: skip
    else:
        parts = {"v": GENERATED_VERSION, "mode": "generated", "model": model_hash, "doc": doc,
                 "questions": [q for q, _ in qas], "k": top_k, "max_new": max_new_tokens}  # fmt: skip
        if cut is not None:
            parts["cut"] = cut
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


def _common_prefix(seqs: Sequence[Sequence[int]], limit: int) -> int:
    prefix, first = 0, seqs[0]
    while prefix < limit and all(ids[prefix] == first[prefix] for ids in seqs):
        prefix += 1
    return prefix


@torch.no_grad()
def teacher_generate(model: Any, prompts: Sequence[list[int]], *, top_k: int, max_new_tokens: int,
                     stop: set[int], device: Any, batch: int = 16, pad_id: int = 0,
                     until: Callable[[list[int]], bool] | None = None) -> list[dict[str, Tensor]]:  # fmt: skip
    """Greedy answers to ``prompts`` (token ids) with the top-``top_k`` log-probabilities at each answer token.

    Per prompt: ``{"ids" [n] int32, "logp" [n, k] float16, "idx" [n, k] int32}``, ``n <= max_new_tokens``; the
    answer ends with its stop token when one came. The prefix all prompts share runs once (its KV cache is repeated
    over the batch); the rest of each prompt is left-padded up to the batch's longest, with the padding masked out
    and the positions continuing the prefix, so every row reads exactly its own prompt (the tests compare the
    answers and top-k with unbatched full passes). ``until``: a row also stops once ``until(its tokens so far)``
    is true (a cut rule that has seen enough; the caller cuts).
    """
    if not prompts:
        return []
    prefix = _common_prefix(prompts, min(len(p) for p in prompts) - 1) if len(prompts) > 1 else 0
    kwarg = _cache_kwarg(model)
    past = None
    if prefix:
        past = getattr(model(input_ids=torch.tensor([prompts[0][:prefix]], device=device), use_cache=True), kwarg)
    result: list[dict[str, Tensor]] = []
    for start in range(0, len(prompts), batch):
        part = prompts[start : start + batch]
        n = len(part)
        lens = [len(p) - prefix for p in part]
        width = max(lens)
        ids_t = torch.full((n, width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros(n, prefix + width, dtype=torch.long, device=device)
        mask[:, :prefix] = 1
        pos = torch.full((n, width), prefix, dtype=torch.long, device=device)
        for r, (p, m) in enumerate(zip(part, lens, strict=True)):
            ids_t[r, width - m :] = torch.tensor(p[prefix:], device=device)
            mask[r, prefix + width - m :] = 1
            pos[r, width - m :] = torch.arange(prefix, prefix + m, device=device)
        kwargs: dict[str, Any] = {"input_ids": ids_t, "attention_mask": mask, "position_ids": pos, "use_cache": True}
        if past is not None:
            import copy

            cache = copy.deepcopy(past)
            cache.batch_repeat_interleave(n)
            kwargs[kwarg] = cache
        out = model(**kwargs)
        cache = getattr(out, kwarg)
        logits = out.logits[:, -1]
        next_pos = torch.tensor([prefix + m for m in lens], device=device)
        done = [False] * n
        toks: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[Tensor]] = [[] for _ in range(n)]
        idxs: list[list[Tensor]] = [[] for _ in range(n)]
        for t in range(max_new_tokens):
            top = logits.float().log_softmax(-1).topk(top_k, dim=-1)
            nxt = top.indices[:, 0]
            for r in range(n):
                if not done[r]:
                    token = int(nxt[r])
                    toks[r].append(token)
                    logps[r].append(top.values[r])
                    idxs[r].append(top.indices[r])
                    done[r] = token in stop or (until is not None and until(toks[r]))
            if all(done) or t == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True,
                        **{kwarg: cache})  # fmt: skip
            cache = getattr(out, kwarg)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
        for r in range(n):
            result.append({"ids": torch.tensor(toks[r], dtype=torch.int32),
                           "logp": torch.stack(logps[r]).to(torch.float16).cpu(),
                           "idx": torch.stack(idxs[r]).to(torch.int32).cpu()})  # fmt: skip
    return result


def build_teacher_cache(model: Any, tokenizer: Any, docs: Sequence[dict[str, Any]], *, model_hash: str,
                        folder: Path, top_k: int = 16, qa_keys: Sequence[str] = ("qa",),
                        max_doc_tokens: int | None = None, device: Any = "cpu", desc: str = "teacher",
                        mode: str = "gold", max_new_tokens: int = 24, cut: str | None = None) -> list[list[Any]]:  # fmt: skip
    """Per document, per question (``qa_keys`` in order, as :func:`pipelines.d2l.data.build_cache` lists them),
    the teacher's top-k on the answer tokens; computed once per document and kept in ``folder``.

    ``mode="gold"``: :class:`Teacher` on the gold answer's tokens; ``mode="generated"``: :class:`GeneratedTeacher`,
    the teacher's own greedy answer (at most ``max_new_tokens`` tokens) with its top-k at each of its tokens;
    ``cut="sentence"`` (generated mode) stops each answer once its first sentence is complete and cuts it there
    (:func:`sentence_cut`, :func:`cut_answer`). The cut rule is part of the cache key."""
    if mode not in ("gold", "generated"):
        raise ValueError(f"teacher mode {mode!r}: expected 'gold' or 'generated'")
    if cut is not None and (cut not in CUT_RULES or mode != "generated"):
        raise ValueError(f"teacher cut {cut!r}: expected one of {CUT_RULES}, in generated mode")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[Teacher]] = []
    for doc in tqdm(docs, desc=desc, leave=False):
        qas = [(qa["question"], qa["answer"]) for key in qa_keys for qa in doc.get(key, [])]
        text = _doc_for_teacher(tokenizer, doc["text"], max_doc_tokens)
        budget = max_new_tokens if mode == "generated" else None
        key = teacher_key(model_hash=model_hash, doc=text, qas=qas, top_k=top_k, max_new_tokens=budget, cut=cut)
        path = folder / f"{key}.pt"
        if path.exists():
            out.append(torch.load(path, weights_only=True))
            continue
        entry: list[Any]
        if mode == "gold":
            seqs = [teacher_sequence(tokenizer, text, q, a) for q, a in qas]
            entry = teacher_topk(model, seqs, top_k, device, pad_id=pad)
        else:
            prompts = [tokenizer(question_prompt(tokenizer, q, text), add_special_tokens=False)["input_ids"]
                       for q, _ in qas]  # fmt: skip
            stop = stop_ids(tokenizer)
            until = None if cut is None else (lambda toks: sentence_cut(tokenizer, toks, stop) is not None)
            entry = teacher_generate(model, prompts, top_k=top_k, max_new_tokens=max_new_tokens, stop=stop,
                                     device=device, pad_id=pad, until=until)  # fmt: skip
            if cut is not None:
                end = end_of_turn_id(tokenizer)
                for i, e in enumerate(entry):
                    k = sentence_cut(tokenizer, e["ids"].tolist(), stop)
                    if k is not None and end is not None:
                        entry[i] = cut_answer(e, k, end)
            for e in entry:
                e["text"] = tokenizer.decode(e["ids"].tolist(), skip_special_tokens=True).strip()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(entry, tmp)
        os.replace(tmp, path)
        out.append(entry)
    return out
