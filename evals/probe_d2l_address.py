"""Does a D2L adapter fire the slots that copy the asked fact? Pointer coverage and addressing on pages.

To run:  .venv/bin/python evals/probe_d2l_address.py [--docs pipelines/d2l/written/validation] [--checkpoint DIR]
         [--max-tokens 640] [--threads 2] [--out evals/results/d2l_address_probe.md]

A copy-head adapter has one slot per (layer, rank): its B column copies the document token its pointer rests on,
its A row decides where in the answer it fires (the coefficient ``A . x`` on the live ``down_proj`` input ``x``).
For every question of a folder in the benchmark's layout whose answer appears verbatim in its page, this measures,
at the position where the model starts its answer (adapter on, bare ChatML prompt, each page one chunk of at most
``--max-tokens`` tokens, as meta-training builds it):

* **coverage**: the pointer mass all slots put on the answer's first token (in slot-equivalents), and whether one
  slot rests on it (mass >= 0.5) -- can the adapter write that token at all;
* **addressing**: among the slots that rest on it, the best rank of its coefficient ``A . x`` among all the page's
  slots (1 = the largest), top-1 / top-5 shares, and the addressing loss meta-training minimises
  (``objective.address_loss``: cross-entropy over slots of cosine / 0.1 towards the pointer mass).

A page whose questions are covered but badly addressed fails at retrieval (the slots are there, the wrong ones fire);
uncovered ones fail earlier (no slot copies the answer). Diagnostic only: never run on ``evals/docs*`` to choose
anything (the default folder is the hand-written validation set).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(docs: Path, checkpoint: str, model: str, max_tokens: int) -> list[dict[str, Any]]:
    import torch

    from agent_sleep.generators.backbone import RowLora
    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.models.loader import load_base_model
    from pipelines.d2l.data import attach_answer_positions, build_cache
    from pipelines.d2l.objective import address_loss, capture_inputs, chunk_loras, group_loras, qa_loss
    from pipelines.d2l.written import load_written

    handle = load_base_model(model)
    gen = D2LGenerator.load(checkpoint, handle=handle)
    net, hc = gen.net, gen.net.config
    split = "eval" if docs.name == "validation" else "train"
    pages = load_written([docs], split)
    first = hc.layers[0]
    with tempfile.TemporaryDirectory() as tmp:
        cached = build_cache(handle.model, handle.tokenizer, pages, encoder_layers=hc.encoder_layers,
                             first_lora_layer=first, max_doc_tokens=max_tokens, device="cpu",
                             path=Path(tmp) / "cache.pt", desc="features")  # fmt: skip
    attach_answer_positions(cached, pages, handle.tokenizer, qa_keys=("qa",), max_doc_tokens=max_tokens)
    lora = RowLora(handle.model, hc.module_names())
    out_rows: list[dict[str, Any]] = []
    n_layers, rank = len(hc.layers), hc.rank
    with torch.no_grad():
        for di, doc in enumerate(cached):
            out = chunk_loras(net, [doc], "cpu")
            ab = group_loras(net, out.a, out.b, [[0]])
            rows = [(0, qa) for qa in doc["qa"]]
            with capture_inputs(handle.model, hc.module_names()) as captured:
                qa_loss(handle.model, lora, hc, ab, rows, "cpu")
            for r, (_, qa) in enumerate(rows):
                pos = qa.get("answer_pos")
                if pos is None:
                    continue
                mass = out.pointer[0][:, pos]  # [L*r]
                x = torch.stack([captured[layer][r, qa["n_prompt"] - 1] for layer in range(n_layers)])
                coef = (out.a[0] * x[:, None, :]).sum(-1).flatten()  # [L*r]: A . x per slot
                order = coef.argsort(descending=True)
                rank_of = torch.empty_like(order)
                rank_of[order] = torch.arange(1, len(order) + 1)
                resting = (mass >= 0.5).nonzero().flatten()
                best = int(rank_of[resting].min()) if len(resting) else None
                loss = address_loss(out, captured, [(0, qa)], [[0]]) if mass.sum() >= 0.05 else None
                out_rows.append({"doc": pages[di]["name"], "question": qa["question"],
                                 "coverage": round(float(mass.sum()), 3), "resting": len(resting),
                                 "best_rank": best, "slots": n_layers * rank,
                                 "address_ce": None if loss is None else round(float(loss), 3)})  # fmt: skip
    return out_rows


def table(rows: list[dict[str, Any]]) -> str:
    n = len(rows)
    covered = [r for r in rows if r["resting"]]
    ranks = [r["best_rank"] for r in covered]
    ces = [r["address_ce"] for r in rows if r["address_ce"] is not None]
    lines = ["| measure | value |", "|---|---|",
             f"| questions with their answer verbatim in the page | {n} |",
             f"| pointer mass on the answer's first token, median (slot-equivalents) | "
             f"{statistics.median(r['coverage'] for r in rows):.2f} |" if rows else "| coverage | n/a |",
             f"| a slot rests on it (mass >= 0.5) | {len(covered)}/{n} |",
             f"| ... and one of those has the largest coefficient A.x (top-1) | {sum(k == 1 for k in ranks)}/{n} |",
             f"| ... among the 5 largest (top-5) | {sum(k <= 5 for k in ranks)}/{n} |",
             f"| best rank of a resting slot, median (of {rows[0]['slots'] if rows else 0}) | "
             f"{statistics.median(ranks) if ranks else 'n/a'} |",
             f"| addressing loss (mean, cosine / 0.1) | {statistics.mean(ces) if ces else float('nan'):.3f} |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from evals.record import probe_parser, write_probe

    parser = probe_parser(__doc__.split("\n\n")[0], pages=True)
    parser.add_argument("--max-tokens", type=int, default=640)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    rows = run(args.docs, args.checkpoint, args.model, args.max_tokens)
    write_probe("probe_d2l_address.py", argv, time.monotonic() - started, table(rows), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
