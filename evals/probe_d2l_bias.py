"""What the document adds to a D2L adapter's answers: the whole adapter vs its bias block alone, on pages.

To run:  .venv/bin/python evals/probe_d2l_bias.py [--docs pipelines/d2l/written/validation] [--max-docs 10]
         [--checkpoint DIR] [--threads 1] [--out evals/results/d2l_bias_probe.md]

A ``use_bias`` checkpoint adds one rank block to every adapter whatever the document says (the bias block). Asked
alone it answers from the question's wording only: a prior. For each page of a folder in the benchmark's layout
(``<slug>.md`` + ``questions.jsonl``; the ``eval`` questions, or every question if the folder has none marked) this
asks each question with the whole adapter and with the bias block alone and counts right answers (the benchmarks'
rule, ``answer_matches``), identical answers, and answers that appear verbatim in the page (copied from it, right
or not). Many copied-but-wrong answers mean the adapter reads the page but retrieves the wrong fact; answers equal
to the bias block's mean the page added nothing. Diagnostic only: never run it on ``evals/docs*`` to choose
anything (the default folder is the hand-written validation set).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(docs: Path, checkpoint: str, model: str, max_docs: int) -> list[dict[str, Any]]:
    from agent_sleep.evaluation.answers import answer_matches
    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.models.loader import load_base_model
    from evals.bench_d2l import Runner

    handle = load_base_model(model)
    runner = Runner(handle, 20)
    gen = D2LGenerator.load(checkpoint, handle=handle)
    if not gen.net.config.use_bias:
        raise SystemExit(f"{checkpoint} has no bias block (use_bias is off): nothing to compare")
    r = gen.net.config.rank
    lines = [json.loads(x) for x in (docs / "questions.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    marked = [q for q in lines if q.get("split") == "eval"]
    questions = marked or lines
    rows = []
    for slug in sorted({q["doc"] for q in questions})[:max_docs]:
        text = (docs / f"{slug}.md").read_text(encoding="utf-8")
        made = gen.internalize(text)
        stacks = {"full": runner.stack_of(made, "full"), "bias": runner.stack_of(made, "bias", slice(-r, None))}
        for q in (q for q in questions if q["doc"] == slug):
            answers = {name: runner.answer(q["question"], stack=stack).strip() for name, stack in stacks.items()}
            rows.append({"doc": slug, "question": q["question"], "gold": q["answer"][0], **answers,
                         **{f"{n}_right": answer_matches(a, q["answer"]) for n, a in answers.items()},
                         **{f"{n}_in_page": bool(a.strip(" .")) and a.strip(" .").lower() in text.lower()
                            for n, a in answers.items()}})  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    n = len(rows)
    lines = ["| | whole adapter | bias block alone |", "|---|---|---|"]
    for what, key in (("right", "right"), ("answer appears verbatim in the page", "in_page")):
        lines.append(f"| {what} | {sum(r[f'full_{key}'] for r in rows)}/{n} | {sum(r[f'bias_{key}'] for r in rows)}/{n} |")
    lines.append(f"| the two answers identical | {sum(r['full'] == r['bias'] for r in rows)}/{n} | |")
    lines += ["", "| page | gold | whole adapter | bias block alone |", "|---|---|---|---|"]
    for r in rows:
        mark = " ✓" if r["full_right"] else (" (in page)" if r["full_in_page"] else "")
        lines.append(f"| {r['doc']} | `{r['gold'][:24]}` | `{r['full'][:30]}`{mark} | `{r['bias'][:30]}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from evals.record import probe_parser, write_probe

    parser = probe_parser(__doc__.split("\n\n")[0], pages=True)
    parser.add_argument("--max-docs", type=int, default=10)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    rows = run(args.docs, args.checkpoint, args.model, args.max_docs)
    write_probe("probe_d2l_bias.py", argv, time.monotonic() - started, table(rows), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
