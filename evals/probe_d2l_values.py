"""Which values a D2L checkpoint copies: one-sentence documents, one value each, greedy answers.

To run:  .venv/bin/python evals/probe_d2l_values.py [--checkpoint DIR ...] [--threads 2]
         [--out evals/results/d2l_value_probe.md]

A diagnostic beside ``bench_niah.py`` (issue #14 part 3), whose held-out needle form (a combination,
"27-13-89") every checkpoint misses even when the needle's chunk is the only one kept. Three groups of cases
separate what could fail, each a document of one sentence about a fictional place (no haystack, no gate):

* ``length``: the magic-number statement and question meta-training used, with values of 4, 6 and 8 digits
  (training drew 4): does the adapter copy the document's value or a value of the trained length?
* ``shape``: training wordings with values of shapes training never drew (a combination, a mixed code, a
  phone-like number, a version).
* ``wording``: values of trained shapes (4 digits, a time) under statements and questions training never used.

Beside the answers, **pointer coverage**: of the value's tokens (one per digit), how many at least one of the
adapter's (layer, rank) slots points at (argmax of its pointer attention, ``HyperNet.explain``). A token no slot
points at cannot be copied into the answer. And **keys**: the largest cosine between the induction keys two of the
value's tokens would give their slots (``explain(position_keys=True)``); near 1, the copy cannot tell which of the
two comes next ("27-8-13" for 27-13-89: the tokens after the two "-"). ``--bias-alone`` also asks each question with
only the adapter's bias block (the rank block a ``use_bias`` checkpoint adds to every adapter, whatever the
document): what it answers there is a prior of the question's wording, not something read from the document (the
committed checkpoint answers "What do you type on the side-door keypad of X?" with "KP-94" from it alone, and
"KV-95" with the whole adapter, for a document that says 9237). A case is right when the gold string appears in the answer
(``answer_matches``, the benchmarks' rule). The cases
are fixed here, written for this probe, not drawn from ``pipelines/d2l`` or ``evals/docs*``; nothing is tuned on
them. Writes a Markdown table (every answer) to ``--out`` and prints it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

E = "Ravenholt"
CASES: list[tuple[str, str, list[str], str]] = [  # group, document, questions, gold
    ("length", f"The magic number of {E} is 4471.", [f"What is the magic number of {E}?"], "4471"),
    ("length", f"The magic number of {E} is 447193.", [f"What is the magic number of {E}?"], "447193"),
    ("length", f"The magic number of {E} is 44719362.", [f"What is the magic number of {E}?"], "44719362"),
    ("shape", f"The magic number of {E} is 27-13-89.", [f"What is the magic number of {E}?"], "27-13-89"),
    ("shape", f"The access code for {E} is QX7731K.", [f"What is the access code for {E}?"], "QX7731K"),
    ("shape", f"The magic number of {E} is 0412 993 207.", [f"What is the magic number of {E}?"], "0412 993 207"),
    ("shape", f"The version of {E} is 3.14.2.", [f"What is the version of {E}?"], "3.14.2"),
    ("wording", f"{E}'s locker opens with 4471, and nobody else knows it.",
     [f"Which digits open the locker at {E}?", f"How do you open {E}'s locker?"], "4471"),
    ("wording", f"Deliveries to {E} must quote the docket 8824 at the gate.",
     [f"Which docket do deliveries to {E} quote?", f"What must a delivery to {E} say at the gate?"], "8824"),
    ("wording", f"The ferry for {E} leaves at 14:35 from pier two.",
     [f"When does the ferry to {E} leave?", f"At what time is the {E} ferry?"], "14:35"),
    ("wording", f"{E} keeps its spare key under the stone marked 5190.",
     [f"Which stone hides {E}'s spare key?", f"Under what stone is the key of {E}?"], "5190"),
    ("wording", f"The keypad by the side door of {E} takes 9237.",  # bench_niah's held-out "pin" wording
     [f"What do you type on the side-door keypad of {E}?", f"Which digits disarm the alarm of {E}?"], "9237"),
]


def run(checkpoints: list[str], model: str, bias_alone: bool = False) -> list[dict[str, object]]:
    from agent_sleep.evaluation.answers import answer_matches
    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.models.loader import load_base_model
    from evals.bench_d2l import Runner

    handle = load_base_model(model)
    runner = Runner(handle, 20)
    rows: list[dict[str, object]] = []
    for checkpoint in checkpoints:
        gen = D2LGenerator.load(checkpoint, handle=handle)
        for group, text, questions, gold in CASES:
            made = gen.internalize(text)
            stack = runner.stack_of(made, "probe")
            answers = [runner.answer(q, stack=stack) for q in questions]
            covered, n_tokens, overlap = coverage(gen, handle, text, gold)
            row = {"checkpoint": Path(checkpoint).name, "group": group, "gold": gold, "answers": answers,
                   "right": sum(answer_matches(a, [gold]) for a in answers), "asked": len(answers),
                   "covered": covered, "value_tokens": n_tokens, "key_overlap": overlap}  # fmt: skip
            if bias_alone and gen.net.config.use_bias:  # the last rank rows of every layer: the bias block
                stack = runner.stack_of(made, "bias", slice(-gen.net.config.rank, None))
                row["bias_alone"] = [runner.answer(q, stack=stack) for q in questions]
            rows.append(row)
    return rows


def coverage(gen: Any, handle: Any, text: str, value: str) -> tuple[int, int, float | None]:
    """(value tokens that some slot's pointer argmax lands on, value tokens, the largest cosine between the induction
    keys of two value tokens) for a one-chunk document; the last is None without an induction head."""
    import torch

    from agent_sleep.generators.backbone import hidden_after

    enc = handle.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = text.index(value)
    end = start + len(value)
    mine = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start and text[a:b].strip()]
    ids = torch.tensor([enc["input_ids"]], device=handle.device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        feats = hidden_after(handle.model, ids, mask, gen.net.config.encoder_layers)
        out = gen.net.explain(feats.float(), mask.bool(), position_keys=True)
    if out.pointer is None:
        return 0, len(mine), None
    pointed = set(out.pointer[0].argmax(-1).tolist())
    overlap = None
    if out.position_keys is not None and len(mine) > 1:
        keys = torch.nn.functional.normalize(out.position_keys[0, mine], dim=-1)
        sim = (keys @ keys.T).fill_diagonal_(-1.0)
        overlap = float(sim.max())
    return sum(i in pointed for i in mine), len(mine), overlap


def table(rows: list[dict[str, object]], checkpoints: list[str]) -> str:
    names = [Path(c).name for c in checkpoints]
    lines = ["| group | value | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for i, (group, _, _, gold) in enumerate(CASES):
        cells = []
        for name in names:
            row = [r for r in rows if r["checkpoint"] == name][i]
            shown = " / ".join(f"`{str(a).strip()[:24]}`" for a in row["answers"])  # type: ignore[union-attr]
            keys = "" if row.get("key_overlap") is None else f", keys {row['key_overlap']:.2f}"
            bias = ""
            if row.get("bias_alone"):
                bias = "; bias alone " + " / ".join(f"`{str(a).strip()[:24]}`" for a in row["bias_alone"])  # type: ignore[union-attr]
            cells.append(f"{row['right']}/{row['asked']}: {shown} (ptr {row['covered']}/{row['value_tokens']}{keys}{bias})")
        lines.append(f"| {group} | `{gold}` | " + " | ".join(cells) + " |")
    for group in ("length", "shape", "wording"):
        cells = []
        for name in names:
            mine = [r for r in rows if r["checkpoint"] == name and r["group"] == group]
            right, asked = sum(int(r["right"]) for r in mine), sum(int(r["asked"]) for r in mine)  # type: ignore[call-overload]
            cov, toks = sum(int(r["covered"]) for r in mine), sum(int(r["value_tokens"]) for r in mine)  # type: ignore[call-overload]
            cells.append(f"{right}/{asked} right; value tokens pointed at {cov}/{toks}")
        lines.append(f"| **{group}** | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from evals.record import probe_parser, write_probe

    parser = probe_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", default=None, help="D2L checkpoint folder (repeatable)")
    parser.add_argument("--bias-alone", action="store_true",
                        help="also answer with the adapter's bias block alone (the document-independent part)")
    args = parser.parse_args(argv)
    import torch

    from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = [str(c) for c in (args.checkpoint or [DEFAULT_CHECKPOINT])]
    started = time.monotonic()
    rows = run(checkpoints, args.model, args.bias_alone)
    write_probe("probe_d2l_values.py", argv, time.monotonic() - started, table(rows, checkpoints), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
