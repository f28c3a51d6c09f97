"""Several documents in one night: one rank-concatenated D2L adapter, or one adapter per document, stacked or routed.

To run:  OMP_NUM_THREADS=1 .venv/bin/python evals/bench_d2l_multi.py --groups 16 --group-size 3 --threads 1
         [--sets synthetic,prose] [--docs evals/docs_heldout] [--seed 7] [--out evals/results/d2l_multi.json]

Held-out documents (``pipelines.d2l.evaluate.heldout_docs``, unseen entities; seed 7, not the trainer's eval
seed 1): ``synthetic`` fact documents (``prose_share=0``) and ``prose`` prose-like ones (``prose_share=1``);
with ``--docs DIR`` also hand-written pages (``evals/docs`` layout; evaluation only). Each set is cut into
``--groups`` groups of ``--group-size`` documents, "one night" each. Every document's questions are answered,
greedy, ``--max-new-tokens`` tokens, D2L's prompt, scored as ``answer_matches``, through:

  base      no adapter;
  solo      the document's own adapter (``D2LGenerator.internalize(text)``);
  concat    ONE adapter of the group: every document chunked on its own, all kept chunks along rank, the bias
            block once (``D2LGenerator.internalize_documents(texts)``; what meta-training's ``acc_k3`` measures);
  joined    ONE adapter of the group's texts joined by blank lines as one document (chunks may straddle two
            documents): what the sleep cycle did with a skill of several documents before ``internalize_documents``;
  stacked   the group's solo adapters stacked, weight 1 each (deltas add: the bias block counts N times);
  mean      the solo adapters stacked with weight 1/N each;
  routed    the solo adapters, each routed as the cycle writes it for a d2l skill (keys: the document's sentences,
            ``consolidation.generation.routing_keys``; MiniLM; ``--threshold``, default the cycle's for ``d2l``, 0.45): a
            question gets the sum of the adapters whose keys it reaches (none: the base model);
  routed1   as routed, but only the best-matching adapter that reaches the threshold: the adapters share a routing
            group (``runtime.routing.applying``), the cycle's default for a night's d2l adapters.

A stack of adapters with weights w_i applies sum_i w_i * scale * B_i A_i (``adapters.stack``; D2L writes
``lora_alpha = scale * rank``), which is one rank-concatenated LoRA; so every condition runs as one per-question
LoRA through ``generators.backbone.RowLora``, batched. ``--check N`` re-answers N questions of the first group
through the product path (PEFT folders on disk, ``adapters.stack.prepare_stack`` + ``LoraHooks``, as
``bench_d2l.Runner`` does) and reports how many answers match.

Reported per condition and set: accuracy; kept share = accuracy / solo accuracy (overall, over questions);
the share of documents (with solo accuracy > 0) that keep >= 90 % of their solo accuracy; for the routed
conditions, how often the question's own adapter fires and how many other adapters fire per question.
Writes JSON and a Markdown table next to it (``.md``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "evals" / "results"
CONDITIONS = ("base", "solo", "concat", "joined", "stacked", "mean", "routed", "routed1")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- documents


def load_sets(args: argparse.Namespace, checkpoint: Path) -> dict[str, list[dict[str, Any]]]:
    """Per set, ``groups * group_size`` documents as ``{"id", "text", "qa"}``."""
    from pipelines.d2l.evaluate import heldout_docs

    n = args.groups * args.group_size
    sets: dict[str, list[dict[str, Any]]] = {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        share = {"synthetic": 0.0, "prose": 1.0}[name]
        # the kind the set is named for, whatever else the checkpoint's recipe mixed in (pages, needles)
        docs = heldout_docs(checkpoint, n, args.seed, prose_share=share, pages_share=0.0, needle_share=0.0)
        sets[name] = [{"id": d["id"], "text": d["text"], "qa": d["qa"]} for d in docs[:n]]
    for folder in args.docs or []:
        from evals.bench_d2l import handwritten_docs, set_name

        pages = handwritten_docs(folder)
        usable = len(pages) // args.group_size * args.group_size
        sets[set_name(folder)] = [{"id": p["id"], "text": p["text"], "qa": p["eval"]} for p in pages[:usable]]
    return sets


# ---------------------------------------------------------------- adapters as [L, R, in], [L, out, R]


def stacked_ab(results: list[Any], modules: list[str], weights: list[float] | None = None) -> tuple[Any, Any]:
    """The adapters ``results`` (Internalized) as one LoRA: their deltas summed with ``weights`` (default 1)."""
    import torch

    weights = weights or [1.0] * len(results)
    a = torch.cat([torch.stack([r.layers[m][0] for m in modules]) for r in results], dim=1)
    b = torch.cat([torch.stack([r.layers[m][1] for m in modules]) * w for r, w in zip(results, weights, strict=True)],
                  dim=2)  # fmt: skip
    return a, b


def answer_all(gen: Any, items: list[tuple[str, tuple[Any, Any] | None]], max_new_tokens: int,
               batch: int = 32) -> list[str]:  # fmt: skip
    """Greedy answers to ``(question, LoRA or None)`` items; the LoRAs of a batch are zero-padded to one rank."""
    import torch

    from agent_sleep.generators.backbone import RowLora
    from agent_sleep.generators.prompts import question_prompt

    model, tok, hc = gen.handle.model, gen.handle.tokenizer, gen.config
    modules = hc.module_names()
    lora = RowLora(model, modules)
    side, tok.padding_side = tok.padding_side, "left"
    out_texts: list[str] = []
    try:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            enc = tok([question_prompt(tok, q) for q, _ in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(gen.handle.device)  # fmt: skip
            rank = max([ab[0].shape[1] for _, ab in chunk if ab is not None], default=0)
            weights = None
            if rank:
                n_layers = len(modules)
                a_pad = torch.zeros(len(chunk), n_layers, rank, chunk_in(chunk))
                b_pad = torch.zeros(len(chunk), n_layers, chunk_out(chunk), rank)
                for row, (_, ab) in enumerate(chunk):
                    if ab is not None:
                        a_pad[row, :, : ab[0].shape[1]] = ab[0]
                        b_pad[row, :, :, : ab[1].shape[2]] = ab[1]
                weights = {m: (a_pad[:, i], b_pad[:, i]) for i, m in enumerate(modules)}
            with torch.inference_mode(), lora.use(weights, hc.scale):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)  # fmt: skip
            out_texts += [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1] :],
                                                              skip_special_tokens=True)]  # fmt: skip
    finally:
        tok.padding_side = side
        lora.remove()
    return out_texts


def chunk_in(chunk: list[tuple[str, Any]]) -> int:
    return next(ab[0].shape[2] for _, ab in chunk if ab is not None)


def chunk_out(chunk: list[tuple[str, Any]]) -> int:
    return next(ab[1].shape[1] for _, ab in chunk if ab is not None)


# ---------------------------------------------------------------- routing


def route_keys(doc: dict[str, Any], max_keys: int) -> list[str]:
    """The keys the sleep cycle writes for a d2l skill holding ``doc`` alone."""
    from agent_sleep.consolidation.generation import routing_keys
    from agent_sleep.selectors.plan import PlannedDocument, SkillPlan

    plan = SkillPlan(skill="doc", generator="d2l",
                     documents=(PlannedDocument(id=doc["id"], source=f"{doc['id']}.md", version=1, text=doc["text"]),))
    return routing_keys(plan, max_keys)


def similarities(router: Any, docs: list[dict[str, Any]], questions: list[str], threshold: float,
                 name_bonus: float) -> Any:  # fmt: skip
    """[questions, docs] each question's similarity to each document's keys as the runtime computes it (best cosine
    plus ``name_bonus`` where the question names a rare name of the document), the questions embedded once."""
    from agent_sleep.adapters.manifest import RoutingSpec

    specs = {f"{d['id']}": RoutingSpec(threshold=threshold, keys=route_keys(d, 256), name_bonus=name_bonus)
             for d in docs}  # fmt: skip
    assert len(specs) == len(docs), "document ids repeat: one column per document is needed"
    return router.similarity_table(specs, questions)


# ---------------------------------------------------------------- one set


def _unrelated_questions() -> list[str]:
    """Every question of the shipped guard suites: requests about none of the documents (an adapter firing on
    one of them changes an answer it has no business changing)."""
    from agent_sleep.evaluation.suites import guard_suites

    return [item.question for suite in guard_suites() for item in suite.items]


def route_set(router: Any, docs: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list[dict[str, Any]],
                                                                                         dict[str, Any]]:
    """Each question's routing within its night (the documents cut into groups of ``--group-size``): per question
    ``{"doc", "group", "own_sim", "best_other_sim", "fired", "top1"}``, and the set's routing summary (own adapter
    fires, others firing, none firing, guard questions firing)."""
    from agent_sleep.adapters.manifest import RoutingSpec
    from agent_sleep.runtime.routing import applying

    size = args.group_size
    meta: list[dict[str, Any]] = []
    fires_right, fires_wrong, fires_none = 0, 0, 0
    for g0 in range(0, len(docs), size):
        group = list(range(g0, g0 + size))
        questions = [qa["question"] for i in group for qa in docs[i]["qa"]]
        owner = [i for i in group for _ in docs[i]["qa"]]
        sims = similarities(router, [docs[i] for i in group], questions, args.threshold, args.name_bonus)
        group_specs = {str(j): RoutingSpec(threshold=args.threshold, keys=["-"], group="d2l") for j in range(size)}
        for i, s in zip(owner, sims, strict=True):
            own = group.index(i)
            fired = [j for j in range(size) if s[j] >= args.threshold]
            # the runtime's rule for a routing group (what the cycle writes for d2l adapters by default)
            top1 = sorted(int(n) for n in applying({str(j): float(s[j]) for j in range(size)}, group_specs))
            fires_right += own in fired
            fires_wrong += len([j for j in fired if j != own])
            fires_none += not fired
            meta.append({"doc": i, "group": g0 // size, "own_sim": float(s[own]),
                         "best_other_sim": float(max([s[j] for j in range(size) if j != own], default=-1.0)),
                         "fired": [group[j] for j in fired], "top1": [group[j] for j in top1]})  # fmt: skip
    n = len(meta)
    unrelated = _unrelated_questions()
    stray = similarities(router, docs, unrelated, args.threshold, args.name_bonus) >= args.threshold
    routing = {"threshold": args.threshold, "name_bonus": args.name_bonus, "own_fires": fires_right / n,
               "top1_own": sum(m["top1"] == [m["doc"]] for m in meta) / n,
               "unrelated_questions": len(unrelated), "unrelated_fires_per_doc": float(stray.mean()),
               "unrelated_any_of_night": float(stray[:, :size].any(axis=1).mean()),
               "wrong_per_question": fires_wrong / n, "none_fires": fires_none / n,
               "own_sim_mean": statistics.fmean(m["own_sim"] for m in meta),
               "best_other_sim_mean": statistics.fmean(m["best_other_sim"] for m in meta)}  # fmt: skip
    return meta, routing


def run_set(gen: Any, router: Any, docs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    modules = gen.config.module_names()
    size = args.group_size
    meta, routing = route_set(router, docs, args)
    solo = [gen.internalize(d["text"]) for d in docs]
    items: dict[str, list[tuple[str, Any]]] = {c: [] for c in CONDITIONS}
    questions = [qa["question"] for d in docs for qa in d["qa"]]
    for g0 in range(0, len(docs), size):
        group = list(range(g0, g0 + size))
        gdocs = [docs[i] for i in group]
        concat = gen.internalize_documents([d["text"] for d in gdocs])
        joined = gen.internalize("\n\n".join(d["text"] for d in gdocs))
        ab = {
            "concat": stacked_ab([concat], modules),
            "joined": stacked_ab([joined], modules),
            "stacked": stacked_ab([solo[i] for i in group], modules),
            "mean": stacked_ab([solo[i] for i in group], modules, [1.0 / size] * size),
        }
        for k, m in enumerate(meta):
            if m["group"] != g0 // size:
                continue
            q, i = questions[k], m["doc"]
            items["base"].append((q, None))
            items["solo"].append((q, stacked_ab([solo[i]], modules)))
            for c in ("concat", "joined", "stacked", "mean"):
                items[c].append((q, ab[c]))
            items["routed"].append((q, stacked_ab([solo[j] for j in m["fired"]], modules) if m["fired"] else None))
            items["routed1"].append((q, stacked_ab([solo[j] for j in m["top1"]], modules) if m["top1"] else None))
    from agent_sleep.evaluation.answers import answer_matches

    golds = [qa["answer"] for d in docs for qa in d["qa"]]
    answers, hits = {}, {}
    for c in CONDITIONS:
        if c not in args.conditions:
            continue
        t0 = time.perf_counter()
        answers[c] = answer_all(gen, items[c], args.max_new_tokens)
        hits[c] = [bool(answer_matches(a, g)) for a, g in zip(answers[c], golds, strict=True)]
        log(f"  {c}: {sum(hits[c])}/{len(hits[c])} ({time.perf_counter() - t0:.0f} s)")
    n = len(golds)
    summary: dict[str, Any] = {"docs": len(docs), "groups": len(docs) // size, "questions": n,
                               "chunks_per_doc": statistics.fmean(r.chunks for r in solo),
                               "tokens_per_doc": statistics.fmean(r.tokens for r in solo)}  # fmt: skip
    solo_hits = sum(hits["solo"])
    for c, h in hits.items():
        per_doc_keep = []
        for di in range(len(docs)):
            idx = [k for k, m in enumerate(meta) if m["doc"] == di]
            s = sum(hits["solo"][k] for k in idx)
            if s:
                per_doc_keep.append(sum(h[k] for k in idx) / s)
        summary[c] = {"acc": sum(h) / n, "kept": (sum(h) / solo_hits) if solo_hits else None,
                      "docs_keep90": (sum(k >= 0.9 for k in per_doc_keep) / len(per_doc_keep))
                      if per_doc_keep else None,
                      "right_when_solo_right": (sum(h[k] for k in range(n) if hits["solo"][k]) / solo_hits)
                      if solo_hits else None}  # fmt: skip
    summary["routing"] = routing
    questions_out = [{**m, "question": q, "gold": g, **{f"{c}": answers[c][k] for c in answers},
                      **{f"hit_{c}": hits[c][k] for c in hits}}
                     for k, (m, (q, _), g) in enumerate(zip(meta, items["base"], golds, strict=True))]  # fmt: skip
    if args.check:
        summary["product_path_check"] = product_check(gen, docs[:size], solo[:size], questions_out, args)
    return {"summary": summary, "questions": questions_out}


def product_check(gen: Any, gdocs: list[dict[str, Any]], solos: list[Any], rows: list[dict[str, Any]],
                  args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Re-answer the first ``--check`` questions of the first group through written PEFT folders and the runtime's
    stack (weights 1), for the solo and stacked conditions: how many answers equal the RowLora ones."""
    from evals.bench_d2l import Runner

    from agent_sleep.adapters import lora_layers, prepare_stack, read_adapter

    runner = Runner(gen.handle, args.max_new_tokens)
    same = {"solo": 0, "stacked": 0}
    rows = [r for r in rows if r["group"] == 0][: args.check]
    with tempfile.TemporaryDirectory(prefix="bench-d2l-multi-") as tmp:
        folders = [gen.write(r, Path(tmp) / f"doc{i}") for i, r in enumerate(solos)]
        layers = [(f.name, lora_layers(read_adapter(f)), 1.0) for f in folders]
        stack_all = prepare_stack("all", layers, dtype=gen.handle.dtype, device=gen.handle.device)
        for r in rows:
            own = prepare_stack("own", [layers[r["doc"]]], dtype=gen.handle.dtype, device=gen.handle.device)
            same["solo"] += runner.answer(r["question"], stack=own) == r["solo"]
            same["stacked"] += runner.answer(r["question"], stack=stack_all) == r["stacked"]
    return {"questions": len(rows), **same}


# ---------------------------------------------------------------- output


def markdown(results: dict[str, dict[str, Any]], size: int) -> str:
    pct = "{:.0%}".format
    lines = [f"| set ({size} docs a night) | docs / questions | condition | accuracy | kept share of solo "
             "| docs keeping >= 90 % | right where solo was right |", "|---" * 7 + "|"]  # fmt: skip
    for name, res in results.items():
        s = res["summary"]
        for c in CONDITIONS:
            if c not in s:
                continue
            row = s[c]
            kept = "–" if row["kept"] is None or c == "solo" else pct(row["kept"])
            k90 = "–" if row["docs_keep90"] is None or c == "solo" else pct(row["docs_keep90"])
            rr = "–" if row["right_when_solo_right"] is None or c == "solo" else pct(row["right_when_solo_right"])
            lines.append(f"| {name} | {s['docs']} / {s['questions']} | {c} | {pct(row['acc'])} | {kept} | {k90} "
                         f"| {rr} |")  # fmt: skip
    if not any(c in res["summary"] for res in results.values() for c in CONDITIONS):
        lines = []  # --routing-only
    lines += ["", "| set | routing threshold (name bonus) | own adapter fires | own adapter applies (group) | other adapters firing per question | none fires "
              "| mean cosine to own keys / best other doc's | guard questions a document's adapter fires on "
              "(one night's three) |", "|---" * 8 + "|"]  # fmt: skip
    for name, res in results.items():
        r = res["summary"]["routing"]
        stray = ("–" if "unrelated_fires_per_doc" not in r else
                 f"{r['unrelated_fires_per_doc']:.1%} ({r['unrelated_any_of_night']:.1%} of {r['unrelated_questions']})")
        bonus = f" ({r['name_bonus']:g})" if "name_bonus" in r else ""
        top1 = pct(r["top1_own"]) if "top1_own" in r else "–"
        lines.append(f"| {name} | {r['threshold']}{bonus} | {pct(r['own_fires'])} | {top1} "
                     f"| {r['wrong_per_question']:.2f} "
                     f"| {pct(r['none_fires'])} | {r['own_sim_mean']:.2f} / "
                     f"{r['best_other_sim_mean']:.2f} | {stray} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=16, help="nights per set")
    parser.add_argument("--group-size", type=int, default=3, help="documents per night")
    parser.add_argument("--sets", default="synthetic,prose", help="held-out synthetic sets: synthetic, prose")
    parser.add_argument("--docs", type=Path, action="append", help="a folder of hand-written pages (repeatable)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--threshold", type=float, default=None,
                        help="routing threshold (default: the cycle's for d2l adapters, routing.thresholds)")
    parser.add_argument("--name-bonus", type=float, default=None,
                        help="routing name bonus (default: the cycle's for d2l adapters, routing.name_bonus)")
    parser.add_argument("--routing-only", action="store_true",
                        help="only the routing table (no adapters made, no answers): seconds, not minutes")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--check", type=int, default=0, help="questions re-answered through the product stack")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "d2l_multi.json")
    args = parser.parse_args(argv)
    args.conditions = {c.strip() for c in args.conditions.split(",")} | {"solo"}
    from agent_sleep.consolidation.config import RoutingSettings

    if args.threshold is None:
        args.threshold = RoutingSettings().threshold_for("d2l")
    if args.name_bonus is None:
        args.name_bonus = RoutingSettings().name_bonus_for("d2l")

    import torch

    from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT, D2LGenerator
    from agent_sleep.runtime.routing import Router
    from agent_sleep.selectors.embeddings import MiniLMEmbedder

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    gen = D2LGenerator.load(checkpoint)
    router = Router(MiniLMEmbedder(threads=args.threads))
    results = {}
    for name, docs in load_sets(args, checkpoint).items():
        log(f"[{name}] {len(docs)} documents in groups of {args.group_size}")
        if args.routing_only:
            meta, routing = route_set(router, docs, args)
            results[name] = {"summary": {"docs": len(docs), "questions": len(meta), "routing": routing},
                             "questions": meta}  # fmt: skip
        else:
            results[name] = run_set(gen, router, docs, args)
    table = markdown(results, args.group_size)
    out = {"command": " ".join([".venv/bin/python", "evals/bench_d2l_multi.py", *(argv or sys.argv[1:])]),
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "checkpoint": f"{checkpoint.name} (version {gen.version})",
           "settings": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else
                            [str(p) for p in v] if isinstance(v, list) else v) for k, v in vars(args).items()},
           "summary": {n: r["summary"] for n, r in results.items()}, "table": table,
           "questions": {n: r["questions"] for n, r in results.items()},
           "seconds": time.perf_counter() - started}  # fmt: skip
    head = f"`{out['command']}` ({out['checkpoint']}, {out['seconds'] / 60:.1f} min)"
    write_results(args.out, out, markdown=f"{head}\n\n{table}")
    print(table)
    print(f"\nWrote {args.out} in {out['seconds'] / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
