"""Hand-written training pages (pipelines/d2l/written.py): loading, their use in meta-training, and their distance
from the evaluation pages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from agent_sleep.models.loader import load_base_model
from pipelines.d2l import pages, written
from pipelines.d2l.trainer import TrainConfig, make_docs, train
from tests.generators.test_d2l_training import _tiny_recipe
from tests.helpers_models import make_tiny_model_dir


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _folder(root: Path, name: str, pages_: dict[str, str], rows: list[dict]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for slug, text in pages_.items():
        (folder / f"{slug}.md").write_text(text, encoding="utf-8")
    (folder / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


_PAGE = "# Quorran Depot\n\nThe depot opens at 07:30 and the manager is Idris Maelwyn.\n"
_ROWS = [
    {"doc": "depot", "split": "train", "question": "When does the depot unlock?",
     "question2": "What time can I get into the depot?", "answer": ["07:30", "7:30 am"]},
    {"doc": "depot", "split": "train", "question": "Who runs the depot?", "answer": "Maelwyn"},
    {"doc": "depot", "split": "eval", "question": "Whose depot is it?", "answer": ["Quorran"]},
]  # fmt: skip


def test_pages_load_with_both_wordings_spans_and_accepted_answers(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "batch", {"depot": _PAGE, "unasked": "No questions here."}, _ROWS)
    (doc,) = written.load_written([folder])  # a page without questions of the split is left out
    assert doc["kind"] == "written" and doc["text"] == _PAGE and doc["split"] == "train"
    assert [q["question"] for q in doc["qa"]] == ["When does the depot unlock?", "Who runs the depot?"]
    assert [q["question"] for q in doc["probe_qa"]] == ["What time can I get into the depot?"]
    assert doc["qa"][0]["answer"] == ["07:30", "7:30 am"] and doc["qa"][1]["answer"] == ["Maelwyn"]
    assert sorted(_PAGE[a:b] for a, b in doc["spans"].values()) == ["07:30", "Maelwyn"]
    (ev,) = written.load_written([folder], "eval")
    assert [q["question"] for q in ev["qa"]] == ["Whose depot is it?"] and ev["probe_qa"] == []


def test_bad_folders_are_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not there: \\['ghost'\\]"):
        written.load_written([_folder(tmp_path, "a", {"depot": _PAGE}, [{**_ROWS[0], "doc": "ghost"}])])
    with pytest.raises(ValueError, match="missing \\['answer'\\]"):
        written.load_written([_folder(tmp_path, "b", {"depot": _PAGE}, [{**_ROWS[0], "answer": []}])])
    bad = _folder(tmp_path, "c", {"depot": _PAGE}, [])
    (bad / "questions.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="questions.jsonl:1: not JSON"):
        written.load_written([bad])
    with pytest.raises(FileNotFoundError, match="no questions.jsonl"):
        written.load_written([tmp_path])


def test_repeated_pages_train_and_the_validation_folder_becomes_the_eval_set(tmp_path: Path) -> None:
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    folder = _folder(tmp_path, "batch", {"depot": _PAGE}, _ROWS)
    data = {"written_dirs": [str(folder)], "written_repeat": 3, "eval_written": str(folder), "use_probe_qa": True}
    cfg = TrainConfig.model_validate(_tiny_recipe(data=data, steps=2, eval_every=2))
    train_docs, eval_docs = make_docs(cfg.data, cfg.seed)
    assert sum(d.get("kind") == "written" for d in train_docs) == 3 and len(train_docs) == 6 + 3
    assert [d["kind"] for d in eval_docs] == ["written"] and eval_docs[0]["qa"][0]["question"] == "Whose depot is it?"
    run = tmp_path / "run"
    train(cfg, run, device="cpu", handle=handle, threads=1)
    cache = next((run / "cache").glob("train-*.pt"))
    cached = torch.load(cache, weights_only=False)
    repeats = [c for c in cached if c["id"] == train_docs[-1]["id"]]
    assert len(repeats) == 3 and all(c is repeats[0] for c in repeats)  # computed and stored once
    # both wordings train, towards the first accepted answer
    assert len(repeats[0]["qa"]) == 3
    tail = handle.tokenizer.decode(repeats[0]["qa"][0]["ids"][repeats[0]["qa"][0]["n_prompt"] :])
    assert tail.startswith("07:30")
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_eval_questions"] for r in evals if r["kind"] == "eval"] == [1]
    assert "written_dirs" not in TrainConfig().data.model_dump()  # older recipes dump (and cache) as before


# ---------------------------------------------------------------- the committed pages

# Capitalised words shared by the committed hand-written pages and the evaluation pages that are ordinary words
# (headings, titles, common nouns), not names. Words that the pages also write in lower case, months and weekdays
# are ordinary without being listed; any other shared capitalised word is a name the pages must not reuse.
_ORDINARY = frozenset("""academy actions airport apologies association atrium boil bonfires brook bulky civic dear
department discard dr ember fares ferries fi frequently greenhouses gull hello highways hosepipes ltd marketing marsh
mr mrs mutual oak operations outfitters pets pier preparation protected quayside spa tanner tannery tools
vaccinations wi""".split())


def _corpus() -> list[Path]:
    return [*written.train_folders(), written.VALIDATION]


def test_the_committed_pages_load_and_their_answers_are_on_the_page() -> None:
    folders = written.train_folders()
    assert len(folders) >= 8 and written.VALIDATION.is_dir()
    train_docs = written.load_written(folders)
    val_docs = written.load_written([written.VALIDATION], "eval")
    assert len(train_docs) >= 200 and len(val_docs) >= 12
    assert not {d["id"] for d in train_docs} & {d["id"] for d in val_docs}
    questions = [q for d in train_docs for q in d["qa"]]
    assert len(questions) >= 1500 and all(len(d["probe_qa"]) == len(d["qa"]) for d in train_docs)
    spanned = sum(len(d["spans"]) for d in train_docs + val_docs)
    asked = sum(len(d["qa"]) for d in train_docs + val_docs)
    assert spanned == asked  # the canonical answer is written as the page writes it
    assert max(len(d["text"].split()) for d in train_docs + val_docs) <= 440


def test_the_committed_pages_share_no_name_with_the_evaluation_pages() -> None:
    def strip(text: str) -> str:  # e-mail and web addresses are not running text
        return re.sub(r"\S+@\S+|https?://\S+|\S+\.(?:com|org|net|example|io|uk)\S*", " ", text)

    reserved = pages.reserved_names()
    calendar = {w.lower() for w in [*pages._MONTHS, *pages._WEEKDAYS]}
    texts = {f"{f.name}/{p.name}": p.read_text(encoding="utf-8") for f in _corpus() for p in f.glob("*.md")}
    evals = [p.read_text(encoding="utf-8") for f in pages.EVAL_PAGE_DIRS for p in f.glob("*.md")]
    lower = set(re.findall(r"\b[a-z][a-z]+\b", "\n".join(map(strip, [*texts.values(), *evals]))))
    shared: dict[str, list[str]] = {}
    for name, text in texts.items():
        for word in set(re.findall(r"\b[A-Z][a-z]+\b", text)):
            w = word.lower()
            if w in reserved and w not in lower and w.rstrip("s") not in calendar and w not in _ORDINARY:
                shared.setdefault(word, []).append(name)
    assert not shared, f"names of evals/docs or evals/docs_heldout in hand-written training pages: {shared}"


def test_held_out_documents_of_a_checkpoint_trained_on_written_pages_stay_generated(tmp_path: Path) -> None:
    from pipelines.d2l.evaluate import heldout_docs

    folder = _folder(tmp_path, "batch", {"depot": _PAGE}, _ROWS)
    data = {"pages_share": 0.5, "written_dirs": [str(folder)], "written_repeat": 2, "eval_written": str(folder)}
    (tmp_path / "d2l_config.json").write_text(json.dumps(
        {"format": "agent-sleep-d2l-hypernet", "hyper": {}, "training": {"config": {"data": data}}}))
    docs = heldout_docs(tmp_path, 6, 7)
    assert len(docs) == 6 and {d["kind"] for d in docs} <= {"facts", "page"} and "page" in {d["kind"] for d in docs}
