"""Realistic training pages (pipelines/d2l/pages.py) and the held-out hand-written pages they must never touch."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

from pipelines.d2l import pages

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "evals" / "docs_heldout"
_CAPS = re.compile(r"\b[A-Z][^\W\d_]+\b")

# Capitalised words that both the evaluation pages and generated pages may contain: ordinary English (sentence
# starts, headings, labels), days and months and organisation kinds; upper-case words of up to three letters
# (IT, ID, the letters of random codes: PK-118 is reserved as a whole, PK alone is not) are not names. Reviewed by hand; a proper name of an evaluation page (a person, place,
# organisation or product) must never be added here.
COMMON = set("""
Academy Address All Animals April At Athletic August Back Battery Bicycles Book Can Change Charging Check Child Children
Club Daily Date December Deposit Distance Do Dogs Dr Each Every February Fi First Food Footnotes For Friday From Group
Groups Harriers House How If In Insurance It Items January July June Keep Lane Large Last Late Lunch Maintenance March
May Membership Monday New Next No Notes November October Office On Online Only Opening Operations Our Pets Plan Planned
Please Pool Price Questions Quiet Read Release Rent Report Road Room Rooms Saturday Saturdays September Service Society
Spectators Street Students Subject Sunday Team Thank The There These This Thursday Tickets Time To Tuesday Up Upgrading
Visiting Visitors Warranty Water We Wear Wednesday Weight Welcome What When Where Who Wi Work You Your Exceptions Fee
Free Line Pets Terminus Stops Lecturer Contact Start Fuel Fallback Results Judge Email Staff Founded Deputy Signature
Depot Designer Model Director Closed Corkage Agent Floor Renewals Pausing Prices Tuition Sessions Classes Entries
""".split())  # fmt: skip


@lru_cache(maxsize=1)
def _generated() -> list[dict]:
    return pages.make_pages(1200, seed=11) + pages.make_pages(300, seed=12, split="heldout")


def _eval_pages() -> dict[str, str]:
    out = {}
    for folder in pages.EVAL_PAGE_DIRS:
        for path in sorted(folder.glob("*.md")):
            if path.name.lower() != "readme.md":
                out[f"{folder.name}/{path.stem}"] = path.read_text(encoding="utf-8")
    return out


def test_pages_are_deterministic_split_and_cover_every_domain_layout_and_kind() -> None:
    docs = pages.make_pages(200, seed=3)
    assert docs == pages.make_pages(200, seed=3) and docs != pages.make_pages(200, seed=4)
    assert {d["domain"] for d in docs} == set(pages.DOMAINS) and {d["layout"] for d in docs} == set(pages.LAYOUTS)
    kinds = Counter(qa["type"] for d in _generated() for qa in d["qa"])
    assert set(kinds) == set(pages.KINDS)
    held = pages.make_pages(200, seed=3, split="heldout")
    assert not {d["entity"] for d in held} & {d["entity"] for d in _generated() if d["split"] == "train"}
    with pytest.raises(ValueError, match="unknown domains or layouts"):
        pages.make_pages(1, seed=0, layouts=["poem"])
    with pytest.raises(ValueError, match="split"):
        pages.make_pages(1, seed=0, split="test")


def test_every_answer_is_one_span_of_its_page_and_questions_do_not_give_it_away() -> None:
    for doc in _generated():
        text = doc["text"]
        assert 150 <= pages.estimate_tokens(text) <= 600
        assert {k: text[s:e] for k, (s, e) in doc["spans"].items()} == doc["facts"]
        assert len(doc["qa"]) == len(doc["probe_qa"]) == len(doc["facts"]) >= 6
        for qa, probe in zip(doc["qa"], doc["probe_qa"], strict=True):
            assert qa["answer"] == probe["answer"] and qa["question"] != probe["question"]
            assert qa["answer"] not in qa["question"] and qa["answer"] not in probe["question"]
            assert not (qa["answer"].isdigit() and len(qa["answer"]) < 2)  # "7" is contained in too much
            # the FAQ layout uses one wording as its heading; the questions asked are other wordings
            assert qa["question"] not in text and probe["question"] not in text
    unique = [d["text"].count(qa["answer"]) == 1 for d in _generated() for qa in d["qa"]]
    assert sum(unique) / len(unique) > 0.995


def test_questions_are_worded_unlike_their_statements() -> None:
    stop = set("the a an of to in on at for by is are be what which who whom how many much does do can must "
               "should when where from with and or this that it its after before one each per your you their "
               "there than as was will i my me get".split())  # fmt: skip
    overlaps = []
    for domain in [*pages.DOMAINS.values(), None]:
        facts = domain.facts if domain else pages.GENERIC_FACTS
        for fact in facts:
            said = {w for s in fact.says for w in re.findall(r"[a-z]+", s.lower())}
            for ask in fact.asks:
                words = {w for w in re.findall(r"[a-z]+", ask.lower()) if w not in stop and w != "e"}
                overlaps.append(len(words & said) / max(1, len(words)))
    assert len(overlaps) >= 3 * 100  # >= 100 facts, >= 3 wordings each
    assert sum(overlaps) / len(overlaps) < 0.25 and sum(o > 0.5 for o in overlaps) / len(overlaps) < 0.1


def test_no_evaluation_page_leaks_into_generated_pages() -> None:
    evals = _eval_pages()
    assert len(evals) >= 8 + 20
    names = {w for text in evals.values() for w in _CAPS.findall(text) if not (w.isupper() and len(w) <= 3)} - COMMON
    shingles = set()
    for text in evals.values():
        words = re.findall(r"\w+", text.lower())
        shingles |= {" ".join(words[i : i + 8]) for i in range(len(words) - 7)}
    eval_questions = {json.loads(line)["question"] for folder in pages.EVAL_PAGE_DIRS
                      for line in (folder / "questions.jsonl").read_text().splitlines() if line.strip()}  # fmt: skip
    reserved = pages.reserved_text()
    for doc in _generated():
        asked = [qa["question"] for qa in doc["qa"] + doc["probe_qa"]]
        found = set(_CAPS.findall(doc["text"] + " " + " ".join(asked)))
        assert not found & names, (found & names, doc["text"])
        words = re.findall(r"\w+", doc["text"].lower())
        assert not {" ".join(words[i : i + 8]) for i in range(len(words) - 7)} & shingles
        assert not set(asked) & eval_questions
        for qa in doc["qa"]:
            if qa["type"] in ("code", "version", "phone", "email", "address"):
                assert qa["answer"].lower() not in reserved
    # the guard itself: composed names are drawn again when they are an evaluation page's word
    assert "tallack" in pages.reserved_names() and "marvaldo" in pages.reserved_names()


def test_data_config_mixes_pages_in_and_old_recipes_dump_as_before() -> None:
    from pipelines.d2l.trainer import DataConfig, TrainConfig, make_docs

    train_docs, eval_docs = make_docs(DataConfig(n_train=10, n_eval=4, prose_share=0.2, pages_share=0.5), seed=0)
    assert [d["kind"] for d in train_docs].count("page") == 5 and [d["kind"] for d in eval_docs].count("page") == 2
    assert {d["split"] for d in eval_docs} == {"heldout"}
    assert "pages_share" not in DataConfig().model_dump(mode="json")  # cache keys of older recipes unchanged
    assert DataConfig(pages_share=0.5).model_dump(mode="json")["pages_share"] == 0.5
    for path in sorted((ROOT / "pipelines" / "d2l").glob("meta_train*.yaml")):
        dumped = TrainConfig.load(path).model_dump(mode="json")
        assert dumped == TrainConfig.model_validate(dumped).model_dump(mode="json")  # round-trips


def test_heldout_folder_is_a_benchmark_set() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from evals.bench_d2l import handwritten_docs, set_name

    docs = handwritten_docs(HELDOUT)
    assert set_name(HELDOUT) == "docs_heldout" and set_name(ROOT / "evals" / "docs") == "handwritten"
    assert len(docs) >= 20 and sum(len(d["eval"]) for d in docs) >= 100
    old = {p.stem for p in (ROOT / "evals" / "docs").glob("*.md")}
    for doc in docs:
        assert len(doc["eval"]) >= 5 and doc["train"] and doc["id"] not in old
        assert 100 <= pages.estimate_tokens(doc["text"]) <= 650
        asked = {q["question"] for q in doc["eval"]}
        assert not asked & {q["question"] for q in doc["train"]}
        for q in doc["eval"] + doc["train"]:
            golds = q["answer"] if isinstance(q["answer"], list) else [q["answer"]]
            assert any(g.lower() in doc["text"].lower() for g in golds), q
            assert not any(g.lower() in q["question"].lower() for g in golds), q
            assert not any(g.isdigit() and len(g) < 2 for g in golds), q
