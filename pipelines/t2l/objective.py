"""What T2L meta-training optimises and how it measures it: answer-token CE and exact match, under per-row LoRAs.

Prompts are rendered with the tokenizer's chat template exactly as ``agent-sleep ask`` renders them
(:func:`agent_sleep.runtime.chat_format.apply_template`; SmolLM2's adds its default system prompt when there is
none), and the skill's instruction is *not* in the prompt: the generated LoRA has to carry it. The LoRA sits on
layers ``>= hc.layers[0]`` only, so the layers below run once without gradients.

Exact match is teacher-forced: the argmax at every answer position (the end-of-turn token included) equals the
target token. That is the same event as "greedy decoding produces exactly the target and stops", at the cost of one
forward pass. Format compliance of free generations (:func:`generate_replies` + ``Task.complies``) is the looser
measure used by the final evaluation, where the base model with the instruction in its prompt answers in its own
words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from agent_sleep.generators.backbone import RowLora, hidden_after, logits_at, run_blocks
from agent_sleep.generators.prompts import answer_ids
from agent_sleep.generators.t2l_net import T2LConfig, T2LNet
from agent_sleep.runtime.chat_format import apply_template
from pipelines.d2l.data import pad_right
from pipelines.t2l.tasks import Example

__all__ = ["Weights", "answer_scores", "chat_prompt", "generate_replies", "l2_penalty", "lora_weights"]

Weights = dict[str, tuple[Tensor, Tensor]]


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    """The prompt ``ask`` sends for ``user`` (and ``system``), up to the assistant's answer."""
    chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return apply_template(tokenizer, chat, add_generation_prompt=True)


def _user(ex: Example, with_instruction: bool) -> str:
    return f"{ex.description}\n\n{ex.item.prompt}" if with_instruction else ex.item.prompt


def lora_weights(net: T2LNet, emb: Tensor) -> Weights:
    """One LoRA per row of ``emb [N, E]``, in RowLora's layout."""
    return net(emb)


def l2_penalty(weights: Weights) -> Tensor:
    """Mean of A^2 plus mean of B^2 over every generated module (T2L's ``l2_reg_generated_w``)."""
    terms = [a.pow(2).mean() + b.pow(2).mean() for a, b in weights.values()]
    return torch.stack(terms).mean()


def answer_scores(model: Any, tokenizer: Any, lora: RowLora, hc: T2LConfig, examples: Sequence[Example],
                  weights: Weights | None, device: Any, *, with_instruction: bool = False,
                  max_answer_tokens: int = 48) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Per-example (mean answer-token CE ``[N]``, teacher-forced exact match ``[N]`` bool).

    ``weights``: row i's LoRA for example i (None: the base model). Differentiable in ``weights``.
    """
    seqs, n_prompt = [], []
    for ex in examples:
        p = tokenizer(chat_prompt(tokenizer, _user(ex, with_instruction), ex.system), add_special_tokens=False)
        a = answer_ids(tokenizer, ex.target)[:max_answer_tokens]
        seqs.append(torch.tensor(p["input_ids"] + a, device=device))
        n_prompt.append(len(p["input_ids"]))
    ids, mask = pad_right(seqs)
    ids = ids.long()
    first = hc.layers[0]
    with torch.no_grad():
        hidden = hidden_after(model, ids, mask, first)
    with lora.use(weights, hc.scale):
        out = run_blocks(model, hidden, mask, first, int(model.config.num_hidden_layers))
    rows, pos, tgt = [], [], []
    for r, (seq, n) in enumerate(zip(seqs, n_prompt, strict=True)):
        for j in range(n, len(seq)):
            rows.append(r)
            pos.append(j - 1)
            tgt.append(int(seq[j]))
    rows_t = torch.tensor(rows, device=device)
    logits = logits_at(model, out, (rows_t, torch.tensor(pos, device=device))).float()
    target = torch.tensor(tgt, device=device)
    ce = F.cross_entropy(logits, target, reduction="none")
    n = len(examples)
    counts = torch.zeros(n, device=device).index_add(0, rows_t, torch.ones_like(ce))
    ce_row = torch.zeros(n, device=device).index_add(0, rows_t, ce) / counts
    wrong = torch.zeros(n, device=device).index_add(0, rows_t, (logits.argmax(-1) != target).float())
    return ce_row, wrong == 0


@torch.no_grad()
def generate_replies(model: Any, tokenizer: Any, lora: RowLora, hc: T2LConfig, examples: Sequence[Example],
                     weights: Weights | None, device: Any, *, with_instruction: bool = False,
                     max_new_tokens: int = 32, batch: int = 32) -> list[str]:  # fmt: skip
    """Greedy replies (left-padded batches), example i under row i of ``weights`` (None: the base model)."""
    replies: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            prompts = [chat_prompt(tokenizer, _user(ex, with_instruction), ex.system) for ex in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            w = None if weights is None else {k: (a[start : start + len(chunk)], b[start : start + len(chunk)])
                                              for k, (a, b) in weights.items()}  # fmt: skip
            with lora.use(w, hc.scale):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [r.strip() for r in replies]
