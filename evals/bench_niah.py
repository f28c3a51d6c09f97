"""Needle recall and the chunk gate across filler styles and needle forms, with chunk-selection rules.

To run:  .venv/bin/python evals/bench_niah.py [--styles narrative,lists] [--forms number,combination]
         [--per-cell 2] [--tokens 32768] [--rules gate,cap4,cap16] [--checkpoint DIR ...] [--threads 1]

``evals/bench_d2l.py --niah`` hides one needle wording in one filler style, both the ones meta-training saw.
Here each filler style of :mod:`pipelines.d2l.haystacks` (training styles and the held-out ``correspondence``)
gets ``--per-cell`` haystacks of ``--tokens`` tokens per needle form (``--forms``; default: one training form,
rotating per style, and the held-out ``combination``). Per haystack and checkpoint the chunks' LoRAs and gates
are computed once (:meth:`D2LGenerator.encode_chunks`), then each rule of ``--rules`` picks the chunks
(:func:`agent_sleep.generators.d2l.keep_chunks`) and the adapter answers both question wordings, greedy, with the
prompt and the scoring rule of ``bench_d2l.py`` (the gold string appears in the answer, ``answer_matches``).
Rules: ``gate`` = the checkpoint's min_gate, no cap (the behaviour before ``max_kept``); ``capK`` = min_gate
and at most K chunks (the highest gates); ``topK`` = K highest gates, min_gate ignored; ``routeK`` = the haystack
cut into sections of K consecutive chunks, each its own adapter (all its chunks), and each question answered by
the section whose sentences are closest to it (:class:`~agent_sleep.runtime.routing.Router`'s encoder and
rule: the best cosine similarity of the question to a section's sentences; no threshold, a question always
reaches one section) - what the sleep cycle does with a long document split into routed sections; ``sections`` =
the product path itself (the generator's sections, the runtime's Router with the cycle's d2l threshold and name
bonus; a question that fires on nothing gets the base model); ``sections0`` = the same with the name bonus off.

Reported per checkpoint x style x form x rule: chunks kept / all (the gate's keep rate at min_gate, before any
cap), whether the needle's chunk was kept, the needle chunk's gate rank, and recall (with, in brackets, the share of
answers that are exactly the value: recall's rule also counts "53033" for 5303). Writes ``--out`` (JSON, with
every chunk's gate) and a Markdown table beside it. ``--dense-docs N`` measures instead what a rule costs a
document whose every chunk states facts (N documents of ``--dense-pages`` generated pages, one question per
page; ``--dense-kind needles``: that many chunk-sized needle haystacks of the classic style back to back). Never reads ``evals/docs*``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "evals" / "results"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_rule(rule: str, min_gate: float) -> tuple[float, int]:
    """(min_gate, max_kept) of a rule name: ``gate``, ``capK``, ``topK`` or ``routeK`` (threshold 0: every
    chunk of the routed section)."""
    if rule == "gate":
        return min_gate, 0
    if rule in ("sections", "sections0"):
        return min_gate, 0
    for prefix, threshold in (("cap", min_gate), ("top", 0.0), ("route", 0.0)):
        if rule.startswith(prefix) and rule[len(prefix) :].isdigit() and int(rule[len(prefix) :]) > 0:
            return threshold, int(rule[len(prefix) :])
    raise SystemExit(f"unknown rule {rule!r}: use gate, capK, topK, routeK (K >= 1), sections or sections0")


def section_sentences(tokenizer: Any, ids: list[int], chunk_tokens: int, section_chunks: int) -> list[list[str]]:
    """Per section of ``section_chunks`` chunks, its text's sentences (three words or more), as the sleep cycle's
    routing keys are cut (:func:`agent_sleep.consolidation.generation.routing_keys`)."""
    from agent_sleep.key_terms import sentences

    size = chunk_tokens * section_chunks
    out = []
    for start in range(0, len(ids), size):
        text = tokenizer.decode(ids[start : start + size])
        out.append(sentences(text) or [text])
    return out


def routed_sections(embedder: Any, sections: list[list[str]], questions: list[str]) -> list[int]:
    """Per question, the section whose sentences are closest to it (best cosine similarity)."""
    import numpy as np

    flat = [t for s in sections for t in s]
    owner = np.repeat(np.arange(len(sections)), [len(s) for s in sections])
    sims = embedder.embed(questions) @ embedder.embed(flat).T  # [questions, sentences]
    picks = []
    for row in sims:
        best = np.full(len(sections), -2.0)
        np.maximum.at(best, owner, row)
        picks.append(int(best.argmax()))
    return picks


def routed_answers(gen: Any, chunks: Any, runner: Any, embedder: Any, text: str, questions: list[str],
                   chunk_tokens: int, section: int, label: str) -> tuple[list[str], list[int]]:
    """Answers under rule ``route<section>``: each question through the adapter of its closest section (all that
    section's chunks), and the section each went to."""
    import torch

    ids = gen.handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    picks = routed_sections(embedder, section_sentences(gen.handle.tokenizer, ids, chunk_tokens, section), questions)
    stacks: dict[int, Any] = {}
    answers = []
    for question, pick in zip(questions, picks, strict=True):
        if pick not in stacks:
            keep = torch.zeros_like(chunks.gates, dtype=torch.bool)
            keep[pick * section : (pick + 1) * section] = True
            stacks[pick] = runner.stack_of(gen.assemble(chunks, keep), f"{label}-{pick}")
        answers.append(runner.answer(question, stack=stacks[pick]))
    return answers, picks


def answer_at(doc: dict[str, Any]) -> int:
    """Where the first question's answer is stated in ``doc`` (a character offset): its attribute's span (pages),
    the needle sentence (haystacks), else the middle."""
    spans = doc.get("spans") or {}
    attribute = str(doc["qa"][0].get("attribute", "")).rsplit(".", 1)[-1]
    span = spans.get(attribute) or spans.get("needle")
    return int(span[0]) if span else len(doc["text"]) // 2


def sectioned_answers(gen: Any, runner: Any, router: Any, text: str, questions: list[str],
                      chunk_tokens: int, rule: str = "sections") -> tuple[list[str], list[int], int]:
    """Answers under rule ``sections`` (``sections0``: with the routing's name bonus off), through the product's own
    parts (see the module doc): the answers, the section each question was served (-1: the whole adapter, the
    document was not sectioned; -2: the adapter did not fire, the base model answered) and the number of sections."""
    from agent_sleep.adapters.artifact import LoraWeights
    from agent_sleep.adapters.manifest import RoutingSpec
    from agent_sleep.adapters.sections import section_layers
    from agent_sleep.adapters.stack import prepare_stack
    from agent_sleep.consolidation.config import RoutingSettings
    from agent_sleep.key_terms import sentences
    from agent_sleep.runtime.routing import split_section

    made = gen.internalize(text, chunk_tokens=chunk_tokens, sections=True)
    settings = RoutingSettings()
    keys = (list(made.keys) or sentences(text) or [text])[: settings.max_keys]  # as the generate stage writes them
    bonus = 0.0 if rule == "sections0" else settings.name_bonus_for("d2l")
    spec = RoutingSpec(threshold=settings.threshold_for("d2l"), keys=keys, group="d2l", sections=list(made.sections),
                       name_bonus=bonus)
    layers = {m: LoraWeights(A=a, B=b, scaling=made.scale) for m, (a, b) in made.layers.items()}
    name = f"doc-{made.document_sha256[:8]}"
    stacks: dict[str, Any] = {}
    answers, served = [], []
    for question in questions:
        active = router.active([(name, 1.0)], {name: spec}, question)
        if not active:
            answers.append(runner.answer(question))
            served.append(-2)
            continue
        item = active[0][0]
        if item not in stacks:
            section = split_section(item)[1]
            cut = layers if section is None else section_layers(layers, spec, section, name)
            stacks[item] = prepare_stack(item, [(item, cut, 1.0)], dtype=runner.handle.dtype,
                                         device=runner.handle.device)  # fmt: skip
        answers.append(runner.answer(question, stack=stacks[item]))
        served.append(-1 if split_section(item)[1] is None else int(split_section(item)[1]))
    return answers, served, len(made.sections)


def chunk_of(tokenizer: Any, text: str, char_start: int, chunk_tokens: int) -> int:
    """Index of the chunk holding the token at character ``char_start`` (the needle value's first token)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > char_start:
            return i // chunk_tokens
    return (len(enc["input_ids"]) - 1) // chunk_tokens


def cells(styles: list[str], forms: list[str] | None) -> list[tuple[str, str]]:
    from pipelines.d2l import haystacks as hs

    if forms:
        return [(s, f) for s in styles for f in forms]
    out = []
    for i, style in enumerate(styles):  # one training form per style (rotating) + every held-out form
        out.append((style, hs.TRAIN_NEEDLES[i % len(hs.TRAIN_NEEDLES)]))
        out += [(style, f) for f in hs.HELDOUT_NEEDLES]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from agent_sleep.evaluation.answers import answer_matches
    from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT, D2LGenerator, keep_chunks
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.runtime.routing import Router
    from agent_sleep.selectors.embeddings import MiniLMEmbedder
    from evals.bench_d2l import Runner
    from pipelines.d2l import haystacks as hs

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_base_model(args.model)
    runner = Runner(handle, args.max_new_tokens)
    gens = {Path(c).name: D2LGenerator.load(c, handle=handle) for c in (args.checkpoint or [DEFAULT_CHECKPOINT])}
    embedder = MiniLMEmbedder(threads=args.threads) if any(r.startswith(("route", "sections"))
                                                           for r in args.rules) else None  # fmt: skip
    router = Router(embedder) if embedder is not None else None
    rows: list[dict[str, Any]] = []
    for style, form in cells(args.styles, args.forms):
        for k in range(args.per_cell):
            doc = hs.make_haystack(style, form, args.tokens, args.seed + k, handle.tokenizer)
            questions = doc["qa"] + doc["probe_qa"]
            target = chunk_of(handle.tokenizer, doc["text"], doc["spans"][form][0], args.chunk_tokens)
            for label, gen in gens.items():
                chunks = gen.encode_chunks(doc["text"], chunk_tokens=args.chunk_tokens)
                gates = chunks.gates
                rank = int((gates > gates[target]).sum()) + 1
                row = {"checkpoint": label, "style": style, "form": form, "split_style": "heldout" if style in
                       hs.HELDOUT_STYLES else "train", "split_form": "heldout" if form in hs.HELDOUT_NEEDLES else
                       "train", "doc": doc["id"], "tokens": chunks.tokens, "chunks": len(gates), "depth": doc["depth"],
                       "needle_chunk": target, "needle_gate": float(gates[target]), "needle_rank": rank,
                       "open": int((gates >= gen.config.min_gate).sum()), "encode_s": chunks.seconds,
                       "gates": [round(float(g), 4) for g in gates], "rules": {}}  # fmt: skip
                for rule in args.rules:
                    threshold, cap = parse_rule(rule, gen.config.min_gate)
                    picks = None
                    if rule in ("sections", "sections0"):
                        answers, picks, n_sections = sectioned_answers(
                            gen, runner, router, doc["text"], [q["question"] for q in questions], args.chunk_tokens,
                            rule)
                        kept_ids = keep_chunks(gates, min_gate=threshold).nonzero().squeeze(1).tolist()
                        keep = torch.zeros_like(gates, dtype=torch.bool)  # "kept": what the first question read
                        if picks[0] >= 0:
                            keep[kept_ids[picks[0]]] = True
                        elif picks[0] == -1:  # not sectioned: the capped adapter
                            keep = keep_chunks(gates, min_gate=threshold, max_kept=gen.max_kept)
                    elif rule.startswith("route"):  # one adapter per section; each question to its closest one
                        answers, picks = routed_answers(gen, chunks, runner, embedder, doc["text"],
                                                        [q["question"] for q in questions], args.chunk_tokens, cap,
                                                        rule)  # fmt: skip
                        keep = torch.zeros_like(gates, dtype=torch.bool)
                        keep[picks[0] * cap : (picks[0] + 1) * cap] = True  # "needle kept": the first question's
                    else:
                        keep = keep_chunks(gates, min_gate=threshold, max_kept=cap)
                        stack = runner.stack_of(gen.assemble(chunks, keep), rule)
                        answers = [runner.answer(q["question"], stack=stack) for q in questions]
                    hits = [answer_matches(a, [q["answer"]]) for a, q in zip(answers, questions, strict=True)]
                    row["rules"][rule] = {"kept": int(keep.sum()), "needle_kept": bool(keep[target]),
                                          "recall": sum(hits) / len(hits), "answers": answers}  # fmt: skip
                    if picks is not None:
                        row["rules"][rule]["sections"] = picks
                row["gold"] = questions[0]["answer"]
                row["questions"] = [q["question"] for q in questions]
                rows.append(row)
                summary = " ".join(f"{r}={v['kept']}:{v['recall']:.1f}" for r, v in row["rules"].items())
                log(f"{label} {style}/{form} #{k}: {row['chunks']} chunks, {row['open']} open, needle gate "
                    f"{row['needle_gate']:.3f} rank {rank}; {summary} (gold {row['gold']})")  # fmt: skip
    return {"rows": rows}


def run_dense(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What a cap costs a document whose every chunk holds facts: ``--dense-docs`` documents of ``--dense-pages``
    generated pages (pipelines/d2l/pages.py, held-out organisation names), one question per page, per rule."""
    import torch

    from agent_sleep.evaluation.answers import answer_matches
    from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT, D2LGenerator, keep_chunks
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.runtime.routing import Router
    from agent_sleep.selectors.embeddings import MiniLMEmbedder
    from evals.bench_d2l import Runner, golds
    from pipelines.d2l import haystacks as hs
    from pipelines.d2l import pages

    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_base_model(args.model)
    runner = Runner(handle, args.max_new_tokens)
    gens = {Path(c).name: D2LGenerator.load(c, handle=handle) for c in (args.checkpoint or [DEFAULT_CHECKPOINT])}
    embedder = MiniLMEmbedder(threads=args.threads) if any(r.startswith(("route", "sections"))
                                                           for r in args.rules) else None  # fmt: skip
    router = Router(embedder) if embedder is not None else None
    rows = []
    for k in range(args.dense_docs):
        if args.dense_kind == "pages":
            docs = pages.make_pages(args.dense_pages, 7000 + args.seed + k, "heldout", tokenizer=handle.tokenizer)
        else:  # one needle (number or time: values this checkpoint carries) per ~chunk of classic filler
            docs = [hs.make_haystack("classic", ("number", "time")[i % 2], args.chunk_tokens - 24,
                                     8000 + 100 * (args.seed + k) + i, handle.tokenizer)
                    for i in range(args.dense_pages)]  # fmt: skip
        text = "\n\n".join(d["text"] for d in docs)
        starts = [sum(len(d["text"]) + 2 for d in docs[:i]) + answer_at(docs[i]) for i in range(len(docs))]
        questions = [d["qa"][0] for d in docs]
        for label, gen in gens.items():
            chunks = gen.encode_chunks(text, chunk_tokens=args.chunk_tokens)
            row = {"checkpoint": label, "doc": k, "facts": len(questions), "tokens": chunks.tokens, "chunks": len(chunks.gates),
                   "open": int((chunks.gates >= gen.config.min_gate).sum()), "rules": {}}  # fmt: skip
            for rule in args.rules:
                threshold, cap = parse_rule(rule, gen.config.min_gate)
                if rule in ("sections", "sections0"):
                    answers, picks, n_sections = sectioned_answers(gen, runner, router, text,
                                                                   [q["question"] for q in questions],
                                                                   args.chunk_tokens, rule)  # fmt: skip
                    kept = n_sections or gen.max_kept
                    kept_ids = keep_chunks(chunks.gates, min_gate=threshold).nonzero().squeeze(1).tolist()
                    right = [p >= 0 and kept_ids[p] == chunk_of(handle.tokenizer, text, start, args.chunk_tokens)
                             for start, p in zip(starts, picks, strict=True)]  # fmt: skip
                elif rule.startswith("route"):
                    answers, picks = routed_answers(gen, chunks, runner, embedder, text,
                                                    [q["question"] for q in questions], args.chunk_tokens, cap, rule)
                    kept = cap  # per question: one section
                    # the section a question went to holds its answer's statement
                    right = [chunk_of(handle.tokenizer, text, start, args.chunk_tokens) // cap == pick
                             for start, pick in zip(starts, picks, strict=True)]  # fmt: skip
                else:
                    result = gen.assemble(chunks, keep_chunks(chunks.gates, min_gate=threshold, max_kept=cap))
                    stack = runner.stack_of(result, rule)
                    answers = [runner.answer(q["question"], stack=stack) for q in questions]
                    kept, right = result.chunks, None
                hits = [answer_matches(a, golds(q)) for a, q in zip(answers, questions, strict=True)]
                row["rules"][rule] = {"kept": kept, "recall": sum(hits) / len(hits)}
                if right is not None:
                    row["rules"][rule]["routed_right"] = sum(right) / len(right)
            rows.append(row)
            log(f"{label} dense #{k}: {row['tokens']} tok, {row['chunks']} chunks, {row['open']} open; "
                + " ".join(f"{r}={v['kept']}:{v['recall']:.2f}" + (f" (routed right {v['routed_right']:.2f})"
                           if "routed_right" in v else "") for r, v in row["rules"].items()))  # fmt: skip
    return rows


def dense_table(rows: list[dict[str, Any]], rules: list[str]) -> str:
    head = "| checkpoint | fact-dense documents (facts each) | tokens | chunks (open) |"
    head += "".join(f" {r}: kept, recall |" for r in rules)
    lines = [head, "|---" * (4 + len(rules)) + "|"]
    for ckpt in sorted({r["checkpoint"] for r in rows}):
        rs = [r for r in rows if r["checkpoint"] == ckpt]
        def cell(x: str) -> str:
            out = (f" {statistics.fmean(r['rules'][x]['kept'] for r in rs):.0f}, "
                   f"{statistics.fmean(r['rules'][x]['recall'] for r in rs):.0%}")
            if all("routed_right" in r["rules"][x] for r in rs):
                out += f" (routed to the answer's chunk {statistics.fmean(r['rules'][x]['routed_right'] for r in rs):.0%})"
            return out + " |"

        cells = "".join(cell(x) for x in rules)
        mean = {key: statistics.fmean(r[key] for r in rs) for key in ("tokens", "chunks", "open")}
        lines.append(f"| {ckpt} | {len(rs)} ({rs[0]['facts']}) | {mean['tokens']:.0f} | {mean['chunks']:.0f} ({mean['open']:.0f}) |"
                     + cells)  # fmt: skip
    return "\n".join(lines)


def exact_share(answers: list[str], gold: str) -> float:
    """The share of ``answers`` that are the value and nothing else (trailing full stop allowed). Recall's rule,
    the gold string somewhere in the answer, also counts an answer that runs on past the value ("53033" for 5303)."""
    return statistics.fmean(a.strip().rstrip(".").strip() == gold for a in answers) if answers else 0.0


def table(rows: list[dict[str, Any]], rules: list[str]) -> str:
    """Markdown: per checkpoint x style x form, the gate's keep rate and per rule kept / needle kept / recall
    (and the exact share, :func:`exact_share`)."""
    head = "| checkpoint | filler style | needle form | haystacks | gate keeps (min_gate) | needle gate rank |"
    head += "".join(f" {r}: kept, needle kept, recall (exact) |" for r in rules)
    lines = [head, "|---" * (6 + len(rules)) + "|"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["checkpoint"], row["style"], row["form"]), []).append(row)

    def tag(name: str, split: str) -> str:
        return f"{name} (held out)" if split == "heldout" else name

    def cell(rs: list[dict[str, Any]], rule: str) -> str:
        kept = statistics.fmean(r["rules"][rule]["kept"] for r in rs)
        needle = sum(r["rules"][rule]["needle_kept"] for r in rs)
        recall = statistics.fmean(r["rules"][rule]["recall"] for r in rs)
        exact = statistics.fmean(exact_share(r["rules"][rule]["answers"], r["gold"]) for r in rs)
        return f" {kept:.0f}, {needle}/{len(rs)}, {recall:.0%} ({exact:.0%}) |"

    for (ckpt, style, form), rs in groups.items():
        keep = sum(r["open"] for r in rs) / sum(r["chunks"] for r in rs)
        ranks = "/".join(str(r["needle_rank"]) for r in rs)
        lines.append(f"| {ckpt} | {tag(style, rs[0]['split_style'])} | {tag(form, rs[0]['split_form'])} | {len(rs)} "
                     f"| {keep:.0%} of {statistics.fmean(r['chunks'] for r in rs):.0f} | {ranks} |"
                     + "".join(cell(rs, rule) for rule in rules))  # fmt: skip
    for ckpt in sorted({r["checkpoint"] for r in rows}):
        for name, pick in (("train styles x train forms", lambda r: r["split_style"] == r["split_form"] == "train"),
                           ("held-out style or form", lambda r: "heldout" in (r["split_style"], r["split_form"]))):
            rs = [r for r in rows if r["checkpoint"] == ckpt and pick(r)]
            if rs:
                keep = sum(r["open"] for r in rs) / sum(r["chunks"] for r in rs)
                lines.append(f"| {ckpt} | **{name}** | | {len(rs)} | {keep:.0%} | "
                             f"median {statistics.median(r['needle_rank'] for r in rs):.0f} |"
                             + "".join(cell(rs, rule) for rule in rules))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from evals.record import write_results
    from pipelines.d2l import haystacks as hs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--styles", default=",".join(hs.STYLES), help="comma-separated filler styles")
    parser.add_argument("--forms", default=None, help="needle forms for every style (default: see module doc)")
    parser.add_argument("--per-cell", type=int, default=1, help="haystacks per style x form")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--rules", default="gate,cap1,cap4,cap16",
                        help="comma-separated: gate, capK, topK, routeK, sections, sections0")
    parser.add_argument("--checkpoint", action="append", help="D2L checkpoint folder (repeatable; default: committed)")
    parser.add_argument("--model", help="base model spec (default: $AGENT_SLEEP_MODEL or SmolLM2-135M-Instruct)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-docs", type=int, default=0,
                        help="instead of haystacks: N fact-dense documents of --dense-pages generated pages each")
    parser.add_argument("--dense-pages", type=int, default=12, help="pages (or needles) per fact-dense document")
    parser.add_argument("--dense-kind", choices=("pages", "needles"), default="pages",
                        help="pages: generated pages; needles: one needle per chunk of classic filler")
    parser.add_argument("--out", type=Path, default=RESULTS / "niah_styles.json")
    args = parser.parse_args(argv)
    args.styles = [s for s in args.styles.split(",") if s]
    args.forms = [f for f in args.forms.split(",") if f] if args.forms else None
    args.rules = [r for r in args.rules.split(",") if r]
    for s in args.styles:
        if s not in hs.STYLES:
            parser.error(f"unknown style {s!r}; choose from {list(hs.STYLES)}")
    for f in args.forms or []:
        if f not in hs.NEEDLES:
            parser.error(f"unknown needle form {f!r}; choose from {list(hs.NEEDLES)}")
    started = time.perf_counter()
    if args.dense_docs:
        result = {"rows": run_dense(args)}
        md = dense_table(result["rows"], args.rules)
    else:
        result = run(args)
        md = table(result["rows"], args.rules)
    argv_used = argv if argv is not None else sys.argv[1:]
    out = {"command": " ".join([".venv/bin/python", "evals/bench_niah.py", *argv_used]),
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "table": md, "rows": result["rows"], "seconds": time.perf_counter() - started}  # fmt: skip
    write_results(args.out, out, markdown=f"`{out['command']}`\n\n{md}")
    print(md)
    print(f"\nWrote {args.out} in {out['seconds'] / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
