"""Can a document become an adapter with no hypernetwork at all? Keys from the model's own reading of it.

To run:  .venv/bin/python evals/probe_d2l_keys.py [--pages 6] [--gains 1,3,10] [--ridge 0.1] [--threads 2]
         [--layers 16-29] [--out evals/results/d2l_keys_probe.md]

An exploratory baseline for issue #14 (D2L on hand-written prose). The trained hypernetwork keys each slot on
the layer-8 features of the token *before* the one it copies (``HyperNet``'s induction head): a lexical key,
which a question worded unlike the page does not reproduce. Here each adapter slot is one position ``t`` of the
page instead, built in closed form from one forward pass, in the spirit of rank-one model editing (ROME/MEMIT):

* key: the input of ``down_proj`` at layer ``l`` while the model reads position ``t`` (the state in which it is
  about to write token ``t+1``), whitened by the second moment ``C`` of those inputs over other pages,
  ``a_t = (C + ridge*I)^-1 x_t / (x_t^T (C + ridge*I)^-1 x_t)``, so the slot gives 1 on ``x_t`` and little on a
  typical other state;
* value: ``gain`` times the unit embedding of token ``t+1`` (SmolLM2 ties embeddings and unembeddings).

One rank per page position per layer (rank = the page's tokens), standard LoRA on ``down_proj``: the adapter
works with ``ask --adapter`` like any other. If the question's answer state resembles the page's state before
the value, the value is written. Measured on the hand-written pages ``pipelines/d2l/written/validation`` (the
split checkpoints are picked on; never ``evals/docs*``), both wordings, the benchmarks' prompt and rule
(``evals/bench_d2l.Runner``, ``answer_matches``). ``C`` comes from the hand-written training pages.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def down_proj_inputs(handle: Any, text: str, layers: list[int]) -> tuple[dict[int, Any], list[int]]:
    """``{layer: [T, d_in]}`` inputs of each layer's ``down_proj`` over the page, and the page's token ids."""
    import torch

    ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    seen: dict[int, Any] = {}
    hooks = []
    for layer in layers:
        module = handle.model.model.layers[layer].mlp.down_proj

        def grab(_m: Any, inputs: tuple[Any, ...], layer: int = layer) -> None:
            seen[layer] = inputs[0][0].detach().float()

        hooks.append(module.register_forward_pre_hook(grab))
    try:
        with torch.inference_mode():
            handle.model(input_ids=torch.tensor([ids], device=handle.device))
    finally:
        for hook in hooks:
            hook.remove()
    return seen, ids


def second_moments(handle: Any, texts: list[str], layers: list[int]) -> dict[int, Any]:
    import torch

    sums: dict[int, Any] = {}
    n = 0
    for text in texts:
        acts, ids = down_proj_inputs(handle, text, layers)
        for layer, x in acts.items():
            sums[layer] = sums.get(layer, 0) + x.T @ x
        n += len(ids)
    return {layer: s / n for layer, s in sums.items()} | {"n": torch.tensor(n)}  # type: ignore[operator]


def page_adapter(handle: Any, text: str, layers: list[int], whiten: dict[int, Any], gain: float) -> dict[str, Any]:
    """``{module: LoraWeights}``: one slot per page position (see the module docstring)."""
    import torch

    from agent_sleep.adapters.artifact import LoraWeights

    acts, ids = down_proj_inputs(handle, text, layers)
    emb = handle.model.get_input_embeddings().weight.detach().float()
    nxt = torch.tensor(ids[1:])
    values = emb[nxt] / emb[nxt].norm(dim=-1, keepdim=True)  # [T-1, hidden]
    out = {}
    for layer in layers:
        x = acts[layer][:-1]  # position t writes token t+1
        wx = x @ whiten[layer]  # whiten[layer] = (C + ridge I)^-1, symmetric
        a = wx / (wx * x).sum(-1, keepdim=True)
        b = gain * values.T  # [hidden, T-1]
        out[f"model.layers.{layer}.mlp.down_proj"] = LoraWeights(A=a.contiguous(), B=b.contiguous(), scaling=1.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pages", type=int, default=6, help="validation pages to ask (0: all 18)")
    parser.add_argument("--cov-pages", type=int, default=60, help="training pages for the second moment")
    parser.add_argument("--gains", default="1,3,10")
    parser.add_argument("--ridge", type=float, default=0.1, help="times the mean eigenvalue of C")
    parser.add_argument("--layers", default="16-29")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    from agent_sleep.adapters.stack import prepare_stack
    from agent_sleep.evaluation.answers import answer_matches
    from agent_sleep.models.loader import load_base_model
    from evals.bench_d2l import Runner
    from pipelines.d2l.written import VALIDATION, load_written, train_folders

    if args.threads:
        torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.layers.split("-"))
    layers = list(range(lo, hi + 1))
    started = time.monotonic()
    handle = load_base_model(args.model)
    runner = Runner(handle, 20)
    train_pages = [d["text"] for d in load_written(train_folders())]
    step = max(1, len(train_pages) // args.cov_pages)
    moments = second_moments(handle, train_pages[::step][: args.cov_pages], layers)
    whiten = {}
    for layer in layers:
        c = moments[layer]
        ridge = args.ridge * float(torch.diagonal(c).mean())
        whiten[layer] = torch.linalg.inv(c + ridge * torch.eye(c.shape[0]))
    pages = load_written([VALIDATION], split="eval")
    pages = pages[: args.pages or None]
    gains = [float(g) for g in args.gains.split(",")]
    right = {g: 0 for g in gains}
    base_right = asked = 0
    lines = []
    for page in pages:
        questions = [(q["question"], q["answer"]) for q in page["qa"] + page["probe_qa"]]
        for q, gold in questions:
            base_right += answer_matches(runner.answer(q), gold)
        asked += len(questions)
        for gain in gains:
            layers_w = page_adapter(handle, page["text"], layers, whiten, gain)
            stack = prepare_stack("keys", [("keys", layers_w, 1.0)], dtype=handle.dtype, device=handle.device)
            for q, gold in questions:
                answer = runner.answer(q, stack=stack)
                ok = answer_matches(answer, gold)
                right[gain] += ok
                lines.append(f"| {page['name'][:28]} | {gain:g} | {q[:60]} | `{gold[0]}` | `{answer[:40]}` | "
                             f"{'yes' if ok else ''} |")
        print(f"{page['name']}: base {base_right}/{asked}, " + ", ".join(f"gain {g:g}: {right[g]}/{asked}"
                                                                           for g in gains), flush=True)
    command = " ".join([".venv/bin/python", "evals/probe_d2l_keys.py", *(argv if argv is not None else sys.argv[1:])])
    head = (f"`{command}` ({time.monotonic() - started:.0f} s; second moment from {int(moments['n'])} tokens of "
            f"hand-written training pages, layers {lo}-{hi})\n\n"
            f"{len(pages)} validation pages, {asked} questions (both wordings): base without the page "
            f"{base_right}/{asked}; " + "; ".join(f"gain {g:g}: {right[g]}/{asked}" for g in gains) + "\n\n")
    text = head + "| page | gain | question | gold | answer | right |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
    print(head)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
