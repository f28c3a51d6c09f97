"""Hand-written training pages for Doc-to-LoRA meta-training (issue #14).

Generated pages (:mod:`pipelines.d2l.pages`) are learnt beyond the in-context accuracy, yet the adapter recovers
little of hand-written pages: one generator's voice, its paraphrase tables and its layouts are a narrow
distribution. The folders under :data:`WRITTEN` hold pages written by hand in many domains, layouts and voices
(policies, manuals, letters, chat threads, timetables, forms...), each with 6-8 questions in two wordings:

* ``<batch>/<slug>.md``: one page; ``<batch>/questions.jsonl``: one line per question,
  ``{"doc": slug, "split": "train" | "eval", "question": ..., "question2": ..., "answer": [canonical, ...]}``.
  The first answer is written as the page writes it (so its span can be found for the pointer loss); the others
  are accepted forms (the benchmark's rule, :func:`agent_sleep.evaluation.answers.answer_matches`).
* ``split: "train"`` folders train (``question`` is a document's ``qa``, ``question2`` its ``probe_qa``);
  ``validation`` (``split: "eval"``) picks checkpoints (``DataConfig.eval_written``) and never trains. The
  folder's layout is the benchmark's (``evals/bench_d2l.py --docs pipelines/d2l/written/validation``).

**Disjoint from the evaluation pages.** Nothing here may come from ``evals/docs`` or ``evals/docs_heldout``; their
writers never saw those folders, and ``tests/generators/test_d2l_written.py`` checks that no distinctive proper name
of them appears here. Do not tune on ``evals/``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.d2l.synth import Doc, doc_id

__all__ = ["VALIDATION", "WRITTEN", "load_written", "train_folders"]

WRITTEN = Path(__file__).resolve().parent / "written"
VALIDATION = WRITTEN / "validation"


def train_folders(root: Path = WRITTEN) -> list[Path]:
    """Every batch folder under ``root`` except :data:`VALIDATION`'s, sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != VALIDATION.name and
                  (p / "questions.jsonl").exists())  # fmt: skip


def _rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "questions.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no questions.jsonl")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = [k for k in ("doc", "split", "question", "answer") if not row.get(k)]
        if missing:
            raise ValueError(f"{path}:{n}: missing {missing}")
        rows.append(row)
    return rows


def _answers(row: dict[str, Any]) -> list[str]:
    answer = row["answer"]
    return [answer] if isinstance(answer, str) else [a for a in answer if isinstance(a, str) and a.strip()]


def load_written(folders: Sequence[Path | str], split: str = "train") -> list[Doc]:
    """The pages of ``folders`` with their ``split`` questions, in :func:`pipelines.d2l.synth.make_fact_docs`'
    schema (``kind="written"``): ``qa`` asks ``question``, ``probe_qa`` asks ``question2`` (where given), ``answer``
    is the accepted list (training targets its first item), ``spans`` the first occurrence of each canonical answer.

    A question naming a page that is not there, or an empty answer list, is a ValueError naming the line.
    """
    docs: list[Doc] = []
    for folder in map(Path, folders):
        rows = [r for r in _rows(folder) if r["split"] == split]
        pages = {p.stem: p for p in folder.glob("*.md") if p.name.lower() != "readme.md"}
        unknown = sorted({r["doc"] for r in rows} - pages.keys())
        if unknown:
            raise ValueError(f"{folder}/questions.jsonl names pages that are not there: {unknown}")
        for slug in sorted(pages):
            mine = [r for r in rows if r["doc"] == slug]
            if not mine:
                continue
            text = pages[slug].read_text(encoding="utf-8")
            qa, probe, spans = [], [], {}
            for i, r in enumerate(mine):
                answers = _answers(r)
                if not answers:
                    raise ValueError(f"{folder}/questions.jsonl: {r['question']!r} has no answer")
                at = text.find(answers[0])
                if at >= 0:
                    spans[f"q{i}"] = [at, at + len(answers[0])]
                base = {"answer": answers, "attribute": f"written.{folder.name}", "type": "written"}
                qa.append({"question": r["question"], **base})
                if r.get("question2"):
                    probe.append({"question": r["question2"], **base})
            docs.append({"id": doc_id(text), "kind": "written", "domain": folder.name, "layout": "written",
                         "text": text, "name": slug, "spans": spans, "qa": qa, "probe_qa": probe,
                         "split": split})  # fmt: skip
    return docs
