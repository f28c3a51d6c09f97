"""Doc-to-LoRA benchmark: quality and speed on held-out documents, and needle-in-a-haystack past the window.

To run:  .venv/bin/python evals/bench_d2l.py [--limit 3] [--skip-gradient] [--niah 1] [--synthetic 16]
         [--docs evals/docs --docs evals/docs_heldout] [--no-d2l]

Documents (none used in meta-training):
  * ``handwritten``: ``evals/docs/*.md``, ordinary prose about fictional things
    (policy, product sheet, runbook, timetable, ...). ``evals/docs/questions.jsonl``
    holds per document ``eval`` questions (scored) and ``probe`` questions
    (paraphrases, the only questions gradient CD trains on). ``--docs DIR``
    (repeatable) reads another folder of the same layout instead, e.g.
    ``evals/docs_heldout`` (26 pages in other domains and layouts, never used
    for training or tuning); its set is named after the folder.
  * ``synthetic``: held-out fact documents from ``pipelines/d2l/synth.py``
    (unseen entities; the vocabularies the checkpoint was trained with), scored
    on ``qa``; CD trains on ``probe_qa``.
  * ``niah``: needle-in-a-haystack documents of ``--niah-tokens`` tokens
    (default 32,768 = 4x SmolLM2's 8,192 window), chunked (``--niah N`` docs).

``--no-d2l`` measures only the reference conditions (a), (c) and, unless
``--skip-gradient``, (d): (b) is reported as n/a, as without a checkpoint.

Conditions, all greedy, ``--max-new-tokens`` tokens, scored "answer contains a
gold string, case-insensitive" (``agent_sleep.evaluation.answer_matches``); prompts
are D2L's (``generators.prompts``):
  (a) base model, question only;  (b) base + the D2L adapter, question only
  (the adapter is written as a PEFT folder and run from disk, as ``ask`` does);
  (c) base model with the document before the question (n/a past the window);
  (d) gradient context distillation (``generators.gradient_cd``): LoRA on the
  same modules and rank as D2L, trained on the probe questions against the
  teacher's (= condition (c)'s) own greedy answers (``--cd-targets gold`` to
  train on the gold probe answers instead), within ``--cd-budget`` seconds.
  Also "(b) other doc": each document's questions asked through the D2L
  adapter of the *next* document in its set, a control for whether the adapter
  carries this document or only the answer format and prior; and
  "(b) via ask prompt": the same D2L adapter behind the chat-template
  prompt ``agent-sleep ask`` sends (SmolLM2's template adds a system prompt the
  hypernetwork never saw in training).
Also per document: D2L internalisation seconds, seconds of ONE forward pass of
the base model over the same document tokens (goal: D2L <= 1.5x that), adapter
MB on disk, KV-cache MB the document costs in context
(layers x 2 x kv_heads x head_dim x bytes x tokens), gap recovered (b-a)/(c-a)
and the D2L speedup over (d). Writes ``evals/results/d2l.json`` and
``d2l.png``; prints Markdown tables. Without a D2L checkpoint it says so and
reports (a), (c), (d) only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "evals" / "docs"
RESULTS = ROOT / "evals" / "results"
CONDITIONS = ("a", "b", "c", "d")
LABELS = {"a": "(a) base", "b": "(b) D2L", "c": "(c) in context", "d": "(d) grad CD"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- documents


def set_name(folder: Path) -> str:
    """The set a folder of hand-written pages is reported as: ``handwritten`` for ``evals/docs``, else its name."""
    return "handwritten" if folder.resolve() == DOCS.resolve() else folder.name


def handwritten_docs(folder: Path = DOCS) -> list[dict[str, Any]]:
    """The pages of ``folder`` (``*.md`` except the README) with their ``eval`` and ``probe`` questions."""
    lines = (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    docs = []
    name = set_name(folder)
    for path in sorted(folder.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        mine = [r for r in rows if r["doc"] == path.stem]
        docs.append({
            "id": path.stem, "set": name, "text": path.read_text(encoding="utf-8"),
            "eval": [r for r in mine if r["split"] == "eval"], "train": [r for r in mine if r["split"] == "probe"],
        })  # fmt: skip
    return docs


def synth_options(gen: Any) -> dict[str, Any]:
    """The data options the checkpoint was meta-trained with (same vocabularies; held-out entities)."""
    data: dict[str, Any] = {}
    if gen is not None:
        from agent_sleep.generators.checkpoint import read_checkpoint_config

        data = read_checkpoint_config(gen.checkpoint).get("training", {}).get("config", {}).get("data", {})
    if not data:
        try:
            import yaml

            data = (yaml.safe_load((ROOT / "pipelines" / "d2l" / "meta_train.yaml").read_text()) or {}).get("data", {})
        except (OSError, ImportError):
            data = {}
    keys = ("n_facts", "n_filler", "vocab_size", "attributes")
    return {k: (tuple(v) if isinstance(v, list) and k != "attributes" else v) for k, v in data.items() if k in keys}


def synthetic_docs(n: int, seed: int, options: dict[str, Any]) -> list[dict[str, Any]]:
    from pipelines.d2l import synth

    # The trainer picks its best checkpoint on make_fact_docs(n_eval, seed + 1, "heldout"): never reuse those.
    seen = {d["id"] for d in synth.make_fact_docs(256, 1, "heldout", **options)}
    docs = [d for d in synth.make_fact_docs(n * 2, 1000 + seed, "heldout", **options) if d["id"] not in seen][:n]
    return [{"id": d["id"], "set": "synthetic", "text": d["text"], "eval": d["qa"], "train": d["probe_qa"]}
            for d in docs]  # fmt: skip


def golds(item: dict[str, Any]) -> list[str]:
    answer = item["answer"]
    return [str(a) for a in answer] if isinstance(answer, list) else [str(answer)]


# ---------------------------------------------------------------- model calls


class Runner:
    """Greedy answers and timings on one base model, with an optional adapter stack active."""

    def __init__(self, handle: Any, max_new_tokens: int) -> None:
        import inspect

        from agent_sleep.adapters.stack import LoraHooks
        from agent_sleep.generators.prompts import answer_ids

        self.handle, self.tok, self.max_new_tokens = handle, handle.tokenizer, max_new_tokens
        self.hooks = LoraHooks.attach(handle.model)
        self.eos = {handle.tokenizer.eos_token_id, *answer_ids(handle.tokenizer, "")[-1:]} - {None}
        params = inspect.signature(handle.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        cfg = handle.model.config
        self.window = int(getattr(cfg, "max_position_embeddings", 0) or 0)

    def answer(self, question: str, *, context: str | None = None, stack: Any = None, chat: bool = False) -> str:
        """Greedy answer; ``chat=True`` uses the tokenizer's chat template, as ``agent-sleep ask`` does."""
        import torch

        from agent_sleep.generators.prompts import question_prompt
        from agent_sleep.runtime.chat_format import apply_template

        if chat:
            content = question.strip() if context is None else f"{context}\n\n{question.strip()}"
            prompt = apply_template(self.tok, [{"role": "user", "content": content}], add_generation_prompt=True)
        else:
            prompt = question_prompt(self.tok, question.strip(), context)
        ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        step, past, out_ids = torch.tensor([ids], device=self.handle.device), None, []
        # With the document in context SmolLM2 answers in whole sentences ("The fee is 12% of ..."); a short budget
        # would cut the answer before the value and understate condition (c), so it gets at least 48 tokens.
        budget = self.max_new_tokens if context is None else max(48, self.max_new_tokens)
        with torch.inference_mode(), self.hooks.activate(stack):
            for _ in range(budget):
                out = self.handle.model(input_ids=step, use_cache=True, **{self.cache_kwarg: past})
                past = getattr(out, self.cache_kwarg)
                token = int(out.logits[0, -1].argmax())
                if token in self.eos:
                    break
                out_ids.append(token)
                step = torch.tensor([[token]], device=self.handle.device)
        return self.tok.decode(out_ids, skip_special_tokens=True).strip()

    def doc_ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def forward_seconds(self, ids: list[int], repeat: int) -> float:
        """Best of ``repeat`` full forward passes over ``ids`` (no cache, no adapter)."""
        import torch

        x = torch.tensor([ids], device=self.handle.device)
        times = []
        with torch.inference_mode(), self.hooks.activate(None):
            for _ in range(repeat):
                t0 = time.perf_counter()
                self.handle.model(input_ids=x, use_cache=False)
                times.append(time.perf_counter() - t0)
        return min(times)

    def kv_mb(self, tokens: int, bytes_per: int | None = None) -> float:
        cfg = self.handle.model.config
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        if bytes_per is None:
            bytes_per = next(self.handle.model.parameters()).element_size()
        return int(cfg.num_hidden_layers) * 2 * kv_heads * head_dim * bytes_per * tokens / 2**20

    def stack_of(self, made: Any, name: str = "adapter", ranks: slice = slice(None)) -> Any:
        """An in-memory stack of a generator's result (``layers``: module -> (A, B), ``scale``), without writing a
        folder; ``ranks``: only these rank rows of every module (e.g. ``slice(-r, None)``, D2L's bias block)."""
        from agent_sleep.adapters.artifact import LoraWeights
        from agent_sleep.adapters.stack import prepare_stack

        layers = {m: LoraWeights(A=a[ranks], B=b[:, ranks], scaling=made.scale) for m, (a, b) in made.layers.items()}
        return prepare_stack(name, [(name, layers, 1.0)], dtype=self.handle.dtype, device=self.handle.device)

    def stack_from_folder(self, folder: Path) -> Any:
        from agent_sleep.adapters import lora_layers, prepare_stack, read_adapter

        layers = lora_layers(read_adapter(folder))
        return prepare_stack(folder.name, [(folder.name, layers, 1.0)], dtype=self.handle.dtype,
                             device=self.handle.device)  # fmt: skip


def adapter_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


# ---------------------------------------------------------------- one document


def score(runner: Runner, questions: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    from agent_sleep.evaluation.answers import answer_matches

    rows = []
    for q in questions:
        answer = runner.answer(q["question"], **kwargs)
        rows.append({"question": q["question"], "gold": golds(q), "answer": answer,
                     "hit": answer_matches(answer, golds(q))})
    return rows


def run_document(doc: dict[str, Any], runner: Runner, gen: Any, args: argparse.Namespace, tmp: Path,
                 cd_modules: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    from agent_sleep.generators import gradient_cd as cd

    ids = runner.doc_ids(doc["text"])
    row: dict[str, Any] = {"id": doc["id"], "set": doc["set"], "tokens": len(ids), "questions": len(doc["eval"]),
                           "kv_mb": runner.kv_mb(len(ids)), "kv_mb_bf16": runner.kv_mb(len(ids), 2)}  # fmt: skip
    fits = runner.window == 0 or len(ids) + 64 <= runner.window
    if args.d2l_only:  # checkpoint comparisons: (a) and (c) do not depend on the checkpoint
        row["forward_s"] = None
        row["answers"] = {"a": None, "c": None}
    else:
        row["forward_s"] = runner.forward_seconds(ids, args.repeat) if fits else None
        row["answers"] = {"a": score(runner, doc["eval"])}
        row["answers"]["c"] = score(runner, doc["eval"], context=doc["text"]) if fits else None

    if gen is not None:
        chunk = args.niah_chunk_tokens if doc["set"] == "niah" else args.chunk_tokens
        result, seconds = timed(lambda: gen.internalize(doc["text"], chunk_tokens=chunk), args.repeat if fits else 1)
        folder = gen.write(result, tmp / f"d2l-{doc['set']}-{doc['id']}", sources={"description": doc["id"]})
        row.update(d2l_s=seconds, d2l_chunks=result.chunks, d2l_dropped=result.dropped, d2l_rank=result.rank,
                   d2l_mb=adapter_mb(folder), d2l_folder=str(folder))  # fmt: skip
        stack = runner.stack_from_folder(folder)
        row["answers"]["b"] = score(runner, doc["eval"], stack=stack)
        # The same adapter behind the prompt `agent-sleep ask` builds (chat template, default system prompt).
        row["answers"]["b_ask"] = score(runner, doc["eval"], stack=stack, chat=True) if args.ask_format else None
    else:
        row["answers"]["b"] = row["answers"]["b_ask"] = None

    if args.skip_gradient or args.d2l_only or not fits or not doc["train"]:
        row["answers"]["d"] = None
    else:
        settings = cd.CDSettings(rank=args.cd_rank, lr=args.cd_lr, max_steps=args.cd_steps, time_budget_s=args.cd_budget,
                                 target_modules=cd_modules, max_answer_tokens=args.max_new_tokens, seed=args.seed)  # fmt: skip
        result = cd.distill(runner.handle, doc["text"], doc["train"], targets=args.cd_targets, settings=settings,
                            progress=sys.stderr.isatty())  # fmt: skip
        folder = cd.write(result, tmp / f"cd-{doc['set']}-{doc['id']}", handle=runner.handle)
        row.update(cd_s=result.seconds, cd_teacher_s=result.teacher_seconds, cd_steps=result.steps,
                   cd_first_loss=result.first_loss, cd_final_loss=result.final_loss, cd_mb=adapter_mb(folder))  # fmt: skip
        row["answers"]["d"] = score(runner, doc["eval"], stack=runner.stack_from_folder(folder))
    _accuracies(row)
    return row


def _accuracies(row: dict[str, Any]) -> None:
    row["acc"] = {k: (None if v is None else sum(r["hit"] for r in v) / max(1, len(v))) for k, v in row["answers"].items()}


def score_other_adapters(rows: list[dict[str, Any]], docs: list[dict[str, Any]], runner: Runner) -> None:
    """Condition "(b) other doc": document i's questions through document i+1's D2L adapter (same set)."""
    if len(rows) < 2 or "d2l_folder" not in rows[0]:
        return
    for i, (row, doc) in enumerate(zip(rows, docs, strict=True)):
        other = runner.stack_from_folder(Path(rows[(i + 1) % len(rows)]["d2l_folder"]))
        row["answers"]["b_other"] = score(runner, doc["eval"], stack=other)
        _accuracies(row)


# ---------------------------------------------------------------- summaries


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracies over questions (not documents), mean timings and sizes over documents."""
    out: dict[str, Any] = {"docs": len(rows), "questions": sum(r["questions"] for r in rows)}
    for k in (*CONDITIONS, "b_ask", "b_other"):
        answered = [a for r in rows if r["answers"].get(k) is not None for a in r["answers"][k]]
        out[f"acc_{k}"] = sum(a["hit"] for a in answered) / len(answered) if answered else None
    a, b, c, d = (out[f"acc_{k}"] for k in CONDITIONS)
    out["gap_recovered"] = (b - a) / (c - a) if None not in (a, b, c) and c - a > 0 else None  # type: ignore[operator]
    out["cd_gap_recovered"] = (d - a) / (c - a) if None not in (a, d, c) and c - a > 0 else None  # type: ignore[operator]
    for key in ("tokens", "forward_s", "d2l_s", "d2l_chunks", "d2l_dropped", "d2l_mb", "kv_mb", "kv_mb_bf16", "cd_s", "cd_steps"):
        out[key] = _mean([r.get(key) for r in rows])
    ratios = [r["d2l_s"] / r["forward_s"] for r in rows if r.get("d2l_s") and r.get("forward_s")]
    out["d2l_over_forward"] = statistics.median(ratios) if ratios else None
    speedups = [r["cd_s"] / r["d2l_s"] for r in rows if r.get("d2l_s") and r.get("cd_s")]
    out["speedup_vs_cd"] = statistics.median(speedups) if speedups else None
    return out


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def markdown(summary: dict[str, dict[str, Any]], niah: dict[str, dict[str, Any]]) -> str:
    pct = "{:.0%}"
    header = ("| documents | docs / questions | (a) base | (b) D2L | (c) in context | (d) grad CD | gap recovered (b) "
              "| (b) other doc | (b) via ask prompt | D2L s | 1 forward s | D2L / forward | CD s | D2L speedup vs CD | adapter MB "
              "| KV cache MB |")  # fmt: skip
    lines = [header, "|---" * 16 + "|"]
    for name, s in summary.items():
        lines.append(
            f"| {name} (~{_f(s['tokens'], '{:.0f}')} tok) | {s['docs']} / {s['questions']} | {_f(s['acc_a'], pct)} "
            f"| {_f(s['acc_b'], pct)} | {_f(s['acc_c'], pct)} | {_f(s['acc_d'], pct)} | {_f(s['gap_recovered'], pct)} "
            f"| {_f(s['acc_b_other'], pct)} | {_f(s['acc_b_ask'], pct)} | {_f(s['d2l_s'], '{:.3f}')} | {_f(s['forward_s'], '{:.3f}')} "
            f"| {_f(s['d2l_over_forward'], '{:.2f}x')} "
            f"| {_f(s['cd_s'], '{:.0f}')} | {_f(s['speedup_vs_cd'], '{:.0f}x')} | {_f(s['d2l_mb'])} | {_f(s['kv_mb'])} |"
        )
    if niah:
        niah_header = ("| needle-in-a-haystack | docs | chunks kept / all x tokens | (a) base | (b) D2L recall | (c) in context "
                       "| D2L s | adapter MB | KV cache MB (fp32 / bf16) |")  # fmt: skip
        lines += ["", niah_header, "|---" * 9 + "|"]
        for name, s in niah.items():
            lines.append(
                f"| {name} | {s['docs']} | {_f(s['d2l_chunks'], '{:.0f}')} / "
                f"{_f((s['d2l_chunks'] or 0) + (s['d2l_dropped'] or 0), '{:.0f}')} x {s.get('chunk_tokens', '?')} "
                f"| {_f(s['acc_a'], pct)} | {_f(s['acc_b'], pct)} | {_f(s['acc_c'], pct)} | {_f(s['d2l_s'], '{:.1f}')} "
                f"| {_f(s['d2l_mb'])} | {_f(s['kv_mb'], '{:.0f}')} / {_f(s['kv_mb_bf16'], '{:.0f}')} |"
            )
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], niah: dict[str, dict[str, Any]], dest: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed; no plot (pip install matplotlib)")
        return None
    groups = {**summary, **{f"NIAH {k}": v for k, v in niah.items()}}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.2
    for i, k in enumerate(CONDITIONS):
        values = [(s[f"acc_{k}"] or 0.0) * 100 for s in groups.values()]
        bars = ax.bar([x + (i - 1.5) * width for x in range(len(groups))], values, width, label=LABELS[k])
        for bar, s in zip(bars, groups.values(), strict=True):
            if s[f"acc_{k}"] is None:
                ax.text(bar.get_x() + width / 2, 1, "n/a", ha="center", fontsize=7, rotation=90)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("answer accuracy on held-out documents")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)
    names = list(summary)
    series = {"one forward pass": "forward_s", "D2L internalise": "d2l_s", "gradient CD": "cd_s"}
    for i, (label, key) in enumerate(series.items()):
        bx.bar([x + (i - 1) * 0.27 for x in range(len(names))], [summary[n][key] or 0 for n in names], 0.27, label=label)
    bx.set_yscale("log")
    bx.set_xticks(range(len(names)), names, fontsize=8)
    bx.set_ylabel("seconds per document (log)")
    bx.set_title("time to use a document")
    bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=120)
    plt.close(fig)
    return dest


# ---------------------------------------------------------------- main


def load_d2l(args: argparse.Namespace, handle: Any) -> tuple[Any, str]:
    """(generator or None, a sentence saying which checkpoint, or why there is none)."""
    from agent_sleep.errors import AgentSleepError

    try:
        from agent_sleep.generators.checkpoint import CONFIG_FILE
        from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT, D2LGenerator
    except ImportError as exc:
        return None, f"D2L generator not importable ({exc})"
    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not (path / CONFIG_FILE).is_file():
        return None, f"no D2L checkpoint at {path} (train one with pipelines/d2l/meta_train.py, or pass --checkpoint)"
    try:
        gen = D2LGenerator.load(path, handle=handle)
    except (AgentSleepError, OSError, RuntimeError) as exc:  # a refusal (other base model, bad file): go on without (b)
        return None, f"D2L checkpoint {path} not usable: {type(exc).__name__}: {exc}"
    return gen, f"D2L checkpoint {path} (version {gen.version})"


def main(argv: list[str] | None = None) -> int:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="at most N documents per set (quick runs)")
    parser.add_argument("--synthetic", type=int, default=16, help="held-out synthetic fact documents (0: none)")
    parser.add_argument("--no-handwritten", action="store_true", help="skip the hand-written documents")
    parser.add_argument("--docs", type=Path, action="append", default=None, metavar="DIR",
                        help="a folder of hand-written pages + questions.jsonl (repeatable; default: evals/docs)")
    parser.add_argument("--no-d2l", action="store_true", help="do not load the D2L generator: (b) is n/a")
    parser.add_argument("--d2l-only", action="store_true",
                        help="only the D2L conditions (b, other doc, ask prompt): compare checkpoints; (a), (c), (d) n/a")
    parser.add_argument("--niah", type=int, default=1, help="needle documents per length (0: skip; slow on CPU)")
    parser.add_argument("--niah-tokens", default="32768", help="comma-separated haystack lengths in tokens")
    parser.add_argument("--niah-chunk-tokens", type=int, default=None, help="D2L chunk for NIAH (default: --chunk-tokens)")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--checkpoint", help="D2L checkpoint folder (default: the committed one)")
    parser.add_argument("--model", help="base model spec (default: $AGENT_SLEEP_MODEL or SmolLM2-135M-Instruct)")
    parser.add_argument("--skip-gradient", action="store_true", help="skip (d), gradient context distillation")
    parser.add_argument("--cd-budget", type=float, default=60.0, help="seconds of CD training per document")
    parser.add_argument("--cd-steps", type=int, default=300, help="most CD steps per document")
    parser.add_argument("--cd-lr", type=float, default=5e-3)
    parser.add_argument("--cd-rank", type=int, default=None, help="CD LoRA rank (default: D2L's)")
    parser.add_argument("--cd-targets", choices=("teacher", "gold"), default="teacher",
                        help="CD targets: the teacher's greedy answers with the document (default) or gold answers")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--no-ask-format", dest="ask_format", action="store_false",
                        help="skip re-scoring (b) with the chat-template prompt that `agent-sleep ask` sends")
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of N runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "d2l.json")
    args = parser.parse_args(argv)
    args.niah_chunk_tokens = args.niah_chunk_tokens or args.chunk_tokens

    import torch

    from agent_sleep.models.loader import load_base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    handle = load_base_model(args.model)
    runner = Runner(handle, args.max_new_tokens)
    gen, d2l_status = (None, "D2L not measured (--no-d2l)") if args.no_d2l else load_d2l(args, handle)
    log(("" if gen is not None else "WARNING: ") + d2l_status + ("" if gen is not None else "; (b) is reported as n/a"))
    cd_modules: tuple[str, ...] = tuple(gen.config.module_names()) if gen is not None else ("down_proj",)
    args.cd_rank = args.cd_rank or (gen.config.rank if gen is not None else 8)

    sets: dict[str, list[dict[str, Any]]] = {}
    if not args.no_handwritten:
        for folder in args.docs or [DOCS]:
            sets[set_name(folder)] = handwritten_docs(folder)[: args.limit]
    options: dict[str, Any] = {}
    if args.synthetic:
        try:
            options = synth_options(gen)
            sets["synthetic"] = synthetic_docs(min(args.synthetic, args.limit or args.synthetic), args.seed, options)
        except ImportError as exc:
            log(f"WARNING: pipelines/d2l/synth.py not importable ({exc}); no synthetic documents")

    # Warm-up, so the first document does not pay for lazy initialisation.
    runner.forward_seconds(runner.doc_ids("Warm-up text."), 1)
    if gen is not None:
        gen.internalize("Warm-up text for the hypernetwork.", chunk_tokens=args.chunk_tokens)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-d2l-") as tmp_name:
        tmp = Path(tmp_name)
        for name, docs in sets.items():
            set_rows = []
            for i, doc in enumerate(docs, 1):
                t0 = time.perf_counter()
                row = run_document(doc, runner, gen, args, tmp, cd_modules)
                set_rows.append(row)
                accs = " ".join(f"{k}={_f(row['acc'][k], '{:.2f}')}" for k in CONDITIONS)
                log(f"[{name} {i}/{len(docs)}] {doc['id']}: {row['tokens']} tok, {accs} "
                    f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
            score_other_adapters(set_rows, docs, runner)
            for row in set_rows:
                row.pop("d2l_folder", None)  # a temporary folder: gone after the run
            rows += set_rows
        niah_rows: list[dict[str, Any]] = []
        if args.niah and gen is not None:
            from pipelines.d2l import synth

            for tokens in [int(t) for t in str(args.niah_tokens).split(",") if t.strip()]:
                for doc in synth.make_needle_docs(args.niah, 2000 + args.seed, tokens, handle.tokenizer):
                    t0 = time.perf_counter()
                    nd = {"id": doc["id"], "set": "niah", "text": doc["text"], "eval": doc["qa"], "train": []}
                    row = run_document(nd, runner, gen, args, tmp, cd_modules)
                    row.update(target_tokens=tokens, depth=doc.get("depth"))
                    row.pop("d2l_folder", None)
                    niah_rows.append(row)
                    log(f"[niah {tokens}] {row['tokens']} tok, {row['d2l_chunks']} chunks kept "
                        f"({row['d2l_dropped']} left out): recall {_f(row['acc']['b'])} in {row['d2l_s']:.1f} s ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        elif args.niah and not args.no_d2l:
            log("NIAH skipped: it needs the D2L generator")

    summary = {name: summarise([r for r in rows if r["set"] == name]) for name in sets}
    if len(summary) > 1:
        summary["all"] = summarise(rows)
    niah: dict[str, dict[str, Any]] = {}
    for tokens in sorted({r["target_tokens"] for r in niah_rows}):
        niah[f"{tokens:,} tok"] = {**summarise([r for r in niah_rows if r["target_tokens"] == tokens]),
                                   "chunk_tokens": args.niah_chunk_tokens}  # fmt: skip
    table = markdown(summary, niah)
    result = {
        "command": " ".join([".venv/bin/python", "evals/bench_d2l.py", *(argv if argv is not None else sys.argv[1:])]),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "d2l": d2l_status,
        "base_model": {"spec": handle.spec, "content_hash": handle.content_hash, "device": handle.device,
                       "dtype": str(handle.dtype), "window": runner.window},
        "torch_threads": torch.get_num_threads(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cd": {"modules": list(cd_modules), "targets": args.cd_targets},
        "synthetic_options": options,
        "summary": summary,
        "niah": niah,
        "table": table,
        "documents": rows,
        "niah_documents": niah_rows,
        "seconds": time.perf_counter() - started,
    }
    write_results(args.out, result)
    png = plot(summary, niah, args.out.with_suffix(".png"))
    print(table)
    print(f"\n{d2l_status}. Wrote {args.out}" + (f" and {png}" if png else "") +
          f" in {result['seconds'] / 60:.1f} min.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
