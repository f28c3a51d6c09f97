"""Suites: items, scoring rules, seeded samples, and the lm-eval task files written for a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_sleep.errors import InvalidInputError, NotFoundError
from agent_sleep.evaluation.suites import (
    Suite,
    SuiteItem,
    guard_suites,
    load_suite,
    offline_hf,
    process_results,
    score_answer,
    write_tasks,
)


def _suite(name: str = "demo", n: int = 5) -> Suite:
    return Suite(name=name, items=[SuiteItem(id=f"q{i}", question=f"What is {i} plus {i}?", answer=str(2 * i),
                                             kind="math" if i % 2 else "even") for i in range(1, n + 1)])  # fmt: skip


def test_contains_finds_the_reference_as_a_whole_word_ignoring_case_and_spacing() -> None:
    assert score_answer("The capital of France is  PARIS.", ["Paris"]) == 1.0
    assert score_answer("2 + 2 = 4", ["4"]) == 1.0
    assert score_answer("It is 14.", ["4"]) == 0.0  # not inside a longer number
    assert score_answer("Parisian food", ["Paris"]) == 0.0
    assert score_answer("It costs $4.99 per order.", ["4.99"]) == 1.0
    assert score_answer("Write to help@acme.com today", ["help@acme.com"]) == 1.0
    assert score_answer("Four of them", ["4", "four"]) == 1.0  # an alias counts
    assert score_answer("Seven", ["4", "four"]) == 0.0


def test_exact_and_regex_rules() -> None:
    assert score_answer("Banana.", ["banana"], "exact") == 1.0
    assert score_answer('"banana"', ["banana"], "exact") == 1.0
    assert score_answer("Banana is a fruit.", ["banana"], "exact") == 0.0
    assert score_answer("Yes, it is.", [r"(?i)^\W*yes\b"], "regex") == 1.0
    assert score_answer("Well, yes.", [r"(?i)^\W*yes\b"], "regex") == 0.0
    assert score_answer("CAT", [r"^\W*CAT\W*$"], "regex") == 1.0
    assert score_answer("cat", [r"^\W*CAT\W*$"], "regex") == 0.0  # case matters unless the pattern says (?i)
    with pytest.raises(InvalidInputError, match="at least one non-empty reference"):
        score_answer("x", ["", "  "])


def test_items_and_suites_are_validated() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        SuiteItem(id="a", question="q", answer="(unclosed", match="regex")
    with pytest.raises(ValidationError):
        SuiteItem(id="a", question="q", answer="x", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="repeated: a"):
        Suite(name="s", items=[SuiteItem(id="a", question="q", answer="x")] * 2)
    with pytest.raises(ValidationError):
        Suite(name="no spaces allowed", items=[SuiteItem(id="a", question="q", answer="x")])


def test_a_sample_is_seeded_ordered_and_the_same_for_every_caller() -> None:
    suite = _suite(n=40)
    a, b = suite.sample(10, seed=3), suite.sample(10, seed=3)
    assert a.ids == b.ids and len(a.ids) == 10
    assert list(a.ids) == [i for i in suite.ids if i in set(a.ids)]  # file order kept
    assert suite.sample(10, seed=4).ids != a.ids
    assert suite.sample(None) is suite and suite.sample(100) is suite
    with pytest.raises(InvalidInputError):
        suite.sample(0)


def test_load_suite_names_every_bad_line(tmp_path: Path) -> None:
    good = {"id": "a", "question": "Q?", "answer": "A"}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"id": "b", "question": "Q?"}) + "\n"
                    + json.dumps({**good, "id": "c", "match": "fuzzy"}) + "\n")  # fmt: skip
    with pytest.raises(InvalidInputError) as info:
        load_suite(path)
    assert f"{path}:3: answer: Field required" in str(info.value) and f"{path}:4: match" in str(info.value)
    path.write_text(json.dumps(good) + "\n")
    assert load_suite(path).name == "mine" and load_suite(path, name="other").name == "other"
    with pytest.raises(NotFoundError, match="missing.jsonl"):
        load_suite(tmp_path / "missing.jsonl")


def test_written_tasks_load_in_lm_eval_offline_and_score_with_our_rule(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    suites = [_suite("alpha"), _suite("beta", n=3)]
    files = write_tasks(suites, tmp_path / "run")
    assert sorted(p.name for p in files.tasks.iterdir()) == [
        "agent_sleep_scoring.py", "alpha.jsonl", "alpha.yaml", "beta.jsonl", "beta.yaml"]  # fmt: skip
    rows = [json.loads(line) for line in (files.tasks / "alpha.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "q1", "question": "What is 1 plus 1?", "answer": "2", "references": ["2"],
                       "kind": "math", "match": "contains"}  # fmt: skip

    manager = TaskManager(include_path=str(files.tasks), include_defaults=False)
    assert sorted(manager.all_tasks) == ["alpha", "beta"]
    with offline_hf(files.hf_home):
        task = manager.load(["alpha"])["tasks"]["alpha"]  # builds the dataset from the JSONL
    config = task.config
    assert (config.output_type, config.test_split, config.num_fewshot) == ("generate_until", "test", 0)
    assert config.generation_kwargs == {"until": ["\n\n"], "max_gen_toks": 32, "do_sample": False}
    assert config.metadata["suite_hash"] == suites[0].content_hash
    docs = list(task.test_docs())
    assert [d["id"] for d in docs] == ["q1", "q2", "q3", "q4", "q5"]
    assert task.doc_to_text(docs[1]) == "What is 2 plus 2?"
    # The task's process_results is ours, loaded from the file beside the YAML.
    assert task.process_results(docs[1], ["2 + 2 = 4."]) == {"accuracy": 1.0}
    assert task.process_results(docs[1], ["It is 14."]) == {"accuracy": 0.0}
    assert process_results(docs[1], ["4"]) == {"accuracy": 1.0}
    # The datasets cache went into the run folder.
    assert any((files.hf_home / "datasets").rglob("*.arrow"))


def test_offline_hf_restores_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("HF_HOME", "/somewhere")
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    with offline_hf(tmp_path):
        assert os.environ["HF_HOME"] == str(tmp_path) and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert os.environ["HF_HOME"] == "/somewhere" and "HF_DATASETS_CACHE" not in os.environ


def test_shipped_guards_load_and_cover_every_category() -> None:
    suites = {s.name: s for s in guard_suites()}
    assert sorted(suites) == ["guards_general", "guards_helpdesk", "guards_instructions"]
    total = sum(len(s.items) for s in suites.values())
    assert 200 <= total <= 400
    kinds = {k.split(".")[0] + "." + k.split(".")[1] for s in suites.values() for k in s.kinds()}
    for expected in ("general.capitals", "general.arithmetic", "general.colours", "general.animals", "general.units",
                     "general.facts", "instructions.only_word", "instructions.yes_no"):  # fmt: skip
        assert expected in kinds
    small = guard_suites(limit=5, seed=1)
    assert [len(s.items) for s in small] == [5, 5, 5]
    assert [s.ids for s in small] == [s.ids for s in guard_suites(limit=5, seed=1)]


def test_importing_the_evaluation_package_loads_no_model_stack() -> None:
    import subprocess
    import sys

    heavy = ("torch", "transformers", "peft", "lm_eval", "datasets", "numpy")
    code = ("import sys, agent_sleep.evaluation.suites, agent_sleep.evaluation.gate, agent_sleep.evaluation.lm_eval\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
