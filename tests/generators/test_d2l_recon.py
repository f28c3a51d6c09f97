"""Reconstruction and completion documents from real offline prose (pipelines/d2l/recon.py) and the recipe option
that mixes them into D2L meta-training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from agent_sleep.models.loader import load_base_model
from pipelines.d2l import recon
from pipelines.d2l.pages import EVAL_PAGE_DIRS
from pipelines.d2l.trainer import DataConfig, TrainConfig, make_docs, train
from tests.generators.test_d2l_training import _tiny_recipe
from tests.helpers_models import make_tiny_model_dir


def test_clean_prose_keeps_paragraphs_and_drops_code() -> None:
    text = ("Intro line that is only short.\n\n"
            "This package reads tables from many formats and writes them back out again, keeping the column\n"
            "types that it detected on the way in.\n\n"
            "```python\nimport x\nx.run()  # a long enough comment line to pass the word count easily here\n```\n\n"
            "    indented code block that goes on for a good number of words so it would count\n\n"
            ">>> doctest line with many words in it that should never be part of training prose text\n\n"
            "| a | b | c | d | e | f | g | h | i | j | k | l | m |\n\n"
            "See the [documentation](https://example.invalid/docs) for `every` option that the table reader offers today.")  # fmt: skip
    paras = recon.clean_prose(text)
    assert paras == [
        "This package reads tables from many formats and writes them back out again, keeping the column types "
        "that it detected on the way in.",
        "See the documentation for every option that the table reader offers today.",
    ]


def test_recon_documents_are_spans_of_real_prose_split_by_source() -> None:
    train_docs = recon.make_recon_docs(40, 0, tokens=(128, 320), window=12, n_recon=3)
    again = recon.make_recon_docs(40, 0, tokens=(128, 320), window=12, n_recon=3)
    held = recon.make_recon_docs(10, 1, "heldout")
    assert [d["text"] for d in train_docs] == [d["text"] for d in again]  # deterministic
    assert not {d["source"] for d in train_docs} & {d["source"] for d in held}
    assert all(not d["source"].startswith("metadata:agent") for d in train_docs + held)
    for d in train_docs:
        assert d["kind"] == "recon" and d["probe_qa"] == [] and d["spans"] == {}
        rec = [qa for qa in d["qa"] if qa["attribute"] == "recon.reconstruct"]
        comp = [qa for qa in d["qa"] if qa["attribute"] == "recon.complete"]
        assert len(rec) == 3 and len(comp) == 1
        for qa in rec:  # anchor + answer are consecutive words of the document
            anchor = re.search(r'"(.*)"', qa["question"]).group(1)  # type: ignore[union-attr]
            assert f"{anchor} {qa['answer']}" in d["text"] and len(qa["answer"].split()) == 12
        assert 6 <= len(comp[0]["answer"].split()) <= 12
    # no evaluation page is a source: no 8-word run of theirs appears in any document
    runs = set()
    for folder in EVAL_PAGE_DIRS:
        for path in folder.glob("*.md"):
            words = path.read_text(encoding="utf-8").split()
            runs |= {" ".join(words[i : i + 8]) for i in range(0, max(0, len(words) - 8), 4)}
    assert runs and not any(r in d["text"] for d in train_docs + held for r in runs)
    with pytest.raises(ValueError, match="split"):
        recon.make_recon_docs(1, 0, "test")


def test_recipe_option_mixes_recon_documents_and_older_recipes_dump_unchanged(tmp_path: Path) -> None:
    assert not {"recon_share", "recon_tokens", "recon_window", "recon_rows"} & set(DataConfig().model_dump())
    d = DataConfig(n_train=10, n_eval=4, recon_share=0.5, recon_tokens=(24, 60), recon_window=6, recon_rows=2)
    assert d.model_dump()["recon_share"] == 0.5
    tr, ev = make_docs(d, 0)
    assert sum(x["kind"] == "recon" for x in tr) == 5 and sum(x.get("kind") == "recon" for x in ev) == 2
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    torch.set_num_threads(1)
    raw = _tiny_recipe(data={"recon_share": 0.5, "recon_tokens": [24, 40], "recon_window": 6, "recon_rows": 2},
                       steps=6, ckpt_every=3, eval_every=100)  # fmt: skip
    run = tmp_path / "run"
    assert train(TrainConfig.model_validate(raw), run, device="cpu", handle=handle, threads=1)["step"] == 6
    saved = json.loads((run / "config.json").read_text())["train"]["data"]
    assert saved["recon_share"] == 0.5 and saved["recon_window"] == 6
    cache = next((run / "cache").glob("train-*.pt"))
    cached = torch.load(cache, weights_only=False)
    assert sum(len(c["qa"]) == 3 for c in cached) >= 3  # the recon documents' 2 + 1 rows reached the cache
