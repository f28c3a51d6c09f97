"""Haystacks in many filler styles and needle forms; the held-out split; meta-training's access; the gate fine-tune."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from pipelines.d2l import haystacks as hs
from pipelines.d2l.trainer import DataConfig, make_docs
from tests.helpers_models import make_tiny_model_dir


def test_haystacks_are_deterministic_long_enough_and_point_at_the_needle() -> None:
    for style in hs.STYLES:
        for form in ("number", "combination", "pin"):
            doc = hs.make_haystack(style, form, 600, seed=3)
            assert doc == hs.make_haystack(style, form, 600, seed=3)
            assert hs.make_haystack(style, form, 600, seed=4)["text"] != doc["text"]
            lo, hi = doc["spans"]["needle"]
            value = doc["qa"][0]["answer"]
            assert entity_and_value(doc["text"][lo:hi], doc["entity"], value)
            v_lo, v_hi = doc["spans"][form]
            assert doc["text"][v_lo:v_hi] == value and lo <= v_lo < v_hi <= hi
            assert doc["text"].count(value) == 1 or style == "pages"  # pages carry numbers of their own
            assert len(doc["text"].split()) * 1.3 >= 600 - 30
            assert doc["qa"][0]["question"] != doc["probe_qa"][0]["question"]


def entity_and_value(sentence: str, entity: str, value: str) -> bool:
    return entity in sentence and value in sentence


def test_each_style_has_many_distinct_units() -> None:
    import random

    for style in hs.STYLES:
        rng = random.Random(0)
        unit = hs.filler_units(style, rng)
        drawn = {unit() for _ in range(300)}
        assert len(drawn) >= (60 if style == "classic" else 150) or (style == "classic" and len(drawn) == 16), style


def test_held_out_style_and_form_are_refused_to_training_code() -> None:
    assert set(hs.HELDOUT_STYLES) and set(hs.HELDOUT_NEEDLES)
    assert not set(hs.HELDOUT_STYLES) & set(hs.TRAIN_STYLES)
    assert not set(hs.HELDOUT_NEEDLES) & set(hs.TRAIN_NEEDLES)
    with pytest.raises(ValueError, match="held out"):
        hs.make_filler_docs(2, 0, ["narrative", "correspondence"])
    for form in ("combination", "pin"):
        with pytest.raises(ValueError, match="held out"):
            hs.make_needle_fact_docs(2, 0, styles=["narrative"], forms=[form])
    with pytest.raises(ValueError, match="held out"):
        DataConfig(hay_styles=["correspondence"])
    with pytest.raises(ValueError, match="unknown"):
        DataConfig(hay_styles=["poetry"])
    with pytest.raises(ValueError, match="needle_share"):
        DataConfig(needle_share=0.2)


def test_data_config_default_dumps_as_before_and_styles_reach_the_documents() -> None:
    old = DataConfig().model_dump(mode="json")
    assert not {"hay_styles", "needle_share", "needle_units"} & set(old)  # older recipes: same dump, same cache keys
    d = DataConfig(n_train=20, n_eval=10, hay_styles=["narrative", "lists", "dialogue"], needle_share=0.5)
    assert d.model_dump(mode="json")["hay_styles"] == ["narrative", "lists", "dialogue"]
    train, heldout = make_docs(d, seed=0)
    needles = [doc for doc in train if doc["kind"] == "needle"]
    assert len(needles) == 10 and len([doc for doc in heldout if doc["kind"] == "needle"]) == 5
    assert {doc["style"] for doc in needles} <= {"narrative", "lists", "dialogue"}
    for doc in needles:
        (form, value), = doc["facts"].items()
        assert form in hs.TRAIN_NEEDLES and doc["text"][slice(*doc["spans"][form])] == value
        assert doc["qa"][0]["answer"] == value
    hay = hs.make_filler_docs(12, 0, ["technical", "dialogue"])
    assert all(doc["qa"] == [] and doc["style"] in ("technical", "dialogue") for doc in hay)
    assert "needle_styles" not in old  # a recipe without it dumps (and caches) as before
    paged = DataConfig(n_train=20, n_eval=10, hay_styles=["narrative"], needle_styles=["pages"], needle_share=0.5)
    needles = [doc for doc in make_docs(paged, seed=0)[0] if doc["kind"] == "needle"]
    assert needles and all(doc["style"] == "pages" and len(doc["facts"]) > 1 for doc in needles)
    with pytest.raises(ValueError):
        DataConfig(needle_styles=["correspondence"])  # a held-out style never trains


def test_gate_tune_changes_only_the_gate_and_writes_a_new_checkpoint(tmp_path: Path) -> None:
    from agent_sleep.generators.checkpoint import WEIGHTS_FILE, read_checkpoint_config, save_checkpoint
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet
    from agent_sleep.models.loader import load_base_model
    from pipelines.d2l import gate_tune
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    folder = make_tiny_model_dir(tmp_path)
    handle = load_base_model(str(folder), device="cpu")
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=str(folder), base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1, b_head="copy", chunk_gate=True, min_gate=0.5)  # fmt: skip
    ckpt = save_checkpoint(HyperNet(config), tmp_path / "ckpt", version="7")
    out = tmp_path / "tuned"
    argv = [str(ckpt), "--out", str(out), "--haystacks", "8", "--val-haystacks", "4", "--steps", "60",
            "--chunk-tokens", "32", "--styles", "narrative,lists,pages"]  # fmt: skip
    assert gate_tune.main(argv) == 0
    before, after = load_file(str(ckpt / WEIGHTS_FILE)), load_file(str(out / WEIGHTS_FILE))
    assert set(before) == set(after)
    assert sorted(k for k in before if not torch.equal(before[k], after[k])) == ["gate.bias", "gate.weight"]
    meta = read_checkpoint_config(out)
    assert meta["version"] == "7+gate" and meta["hyper"] == read_checkpoint_config(ckpt)["hyper"]
    report = meta["gate_tune"]
    assert report["after"]["train"]["accuracy"] >= report["before"]["train"]["accuracy"]
    assert json.dumps(report)  # provenance is plain JSON
    with pytest.raises(SystemExit):  # never over an existing folder
        gate_tune.main(argv)
    # with a latent cache, a refit reads the chunks back instead of encoding them again: the same gate
    cache = tmp_path / "cache"
    for name in ("c1", "c2"):
        assert gate_tune.main([*argv[:1], "--out", str(tmp_path / name), *argv[3:], "--cache", str(cache)]) == 0
    assert len(list(cache.glob("*.pt"))) == 2
    assert load_file(str(tmp_path / "c2" / WEIGHTS_FILE))["gate.weight"].equal(after["gate.weight"])
    with pytest.raises(ValueError, match="held out"):
        gate_tune.main([str(ckpt), "--out", str(tmp_path / "x"), "--styles", "correspondence"])


def test_formatted_values_vary_in_shape_and_never_take_the_held_out_combinations() -> None:
    import random
    import re

    rng = random.Random(3)
    values = [hs._formatted(rng) for _ in range(3000)]  # noqa: SLF001
    assert not [v for v in values if re.fullmatch(r"\d{2}-\d{2}-\d{2}", v)]
    shapes = {re.sub(r"[A-Z]", "A", re.sub(r"\d", "9", v)) for v in values}
    assert len(shapes) > 300 and {"-", " ", ".", "/"} <= {c for v in values for c in v}
    assert {"serial", "reference", "phone", "version"} <= set(hs.TRAIN_NEEDLES)
    with pytest.raises(ValueError, match="held out"):
        DataConfig(needle_share=0.2, hay_styles=["narrative"], needle_forms=["combination"])


def test_varied_values_have_many_lengths_and_never_the_held_out_shape() -> None:
    from pipelines.d2l import synth

    docs = hs.make_needle_fact_docs(300, seed=2, styles=["classic"], forms=["number", "code"], varied_values=True)
    values = [v for d in docs for v in d["facts"].values()]
    assert len({len(v) for v in values}) >= 8  # 2-10 digits, codes of 1-3 letters and 2-6 digits
    assert not any(hs._COMBINATION_SHAPE.fullmatch(v) for v in values)
    for d in docs:
        assert {k: d["text"][s:e] for k, (s, e) in d["spans"].items()} == d["facts"]
    # off by default: the documents of earlier recipes are unchanged
    plain = hs.make_needle_fact_docs(30, seed=2, styles=["classic"], forms=["number"])
    assert {len(v) for d in plain for v in d["facts"].values()} == {4}
    facts = synth.make_fact_docs(200, seed=3, attributes=["magic", "code"], n_facts=(1, 2), varied_values=True)
    assert len({len(d["facts"]["magic"]) for d in facts if "magic" in d["facts"]}) >= 8
    assert synth.make_fact_docs(20, seed=3) == synth.make_fact_docs(20, seed=3, varied_values=False)


def test_shape_mix_gives_identifier_needles_other_forms_values_and_leaves_old_data_alone() -> None:
    kw = {"styles": ["narrative"], "forms": ["number"], "varied_values": True}
    plain = hs.make_needle_fact_docs(40, 0, **kw)
    assert plain == hs.make_needle_fact_docs(40, 0, **kw, shape_mix=0.0)  # old recipes draw the same documents
    mixed = hs.make_needle_fact_docs(40, 0, **kw, shape_mix=1.0)
    values = [d["facts"]["number"] for d in mixed]
    assert not any(v.isdigit() for v in values)  # every value another identifier form's (none is bare digits)
    for d in mixed:  # still a stated value the pointer can find, never the held-out combination's shape
        lo, hi = d["spans"]["number"]
        assert d["text"][lo:hi] == d["facts"]["number"] == d["qa"][0]["answer"]
        assert not re.fullmatch(r"\d{2}-\d{2}-\d{2}", d["facts"]["number"])
    times = hs.make_needle_fact_docs(10, 0, styles=["narrative"], forms=["time"], shape_mix=1.0)
    assert all(re.fullmatch(r"\d{1,2}:\d{2}", d["facts"]["time"]) for d in times)  # not an identifier form


def test_entry_needles_word_many_things_many_ways_with_any_shape_and_never_the_held_out_words() -> None:
    docs = hs.make_needle_fact_docs(200, 0, styles=["narrative", "lists"], forms=["entry"])
    statements = {d["text"][slice(*d["spans"]["entry"])] for d in docs}
    assert len(statements) == len(docs)  # values drawn fresh
    questions = [q for d in docs for q in (d["qa"][0]["question"], d["probe_qa"][0]["question"])]
    assert all(d["qa"][0]["question"] != d["probe_qa"][0]["question"] for d in docs)
    shapes = {re.sub(r"[A-Z]", "A", re.sub(r"\d", "9", d["facts"]["entry"])) for d in docs}
    assert len(shapes) > 40  # the value's shape is not set by the form
    # each thing is asked with values of several shapes: its wording cannot tell the shape
    by_thing: dict[str, set[str]] = {}
    for d in docs:
        thing = next(t for t in hs._ENTRY_THINGS if t in d["qa"][0]["question"])  # noqa: SLF001
        assert thing in d["text"] and thing in d["probe_qa"][0]["question"]
        by_thing.setdefault(thing, set()).add(re.sub(r"\d", "9", d["facts"]["entry"]))
    assert sum(len(v) > 1 for v in by_thing.values()) > len(by_thing) // 2
    words = {w for q in [*questions, *(d["text"] for d in docs)] for w in re.findall(r"[a-z]+", q.lower())}
    held_out = {"keypad", "alarm", "door", "vault", "safe", "dial", "combination", "digits", "type", "disarm",
                "takes"}
    entry_words = {w for t in [*hs._ENTRY_THINGS, *hs.NEEDLES["entry"][1], *hs.NEEDLES["entry"][2]]  # noqa: SLF001
                   for w in re.findall(r"[a-z]+", t.lower())}
    assert not held_out & entry_words
    assert {"locker", "printer"} <= words
    for d in docs:
        assert not re.fullmatch(r"\d{2}-\d{2}-\d{2}", d["facts"]["entry"])
        lo, hi = d["spans"]["entry"]
        assert d["text"][lo:hi] == d["qa"][0]["answer"] == d["facts"]["entry"]
    hay = hs.make_haystack("narrative", "entry", 400, seed=1)  # evaluation can hide one in a haystack too
    assert hay["text"][slice(*hay["spans"]["entry"])] == hay["qa"][0]["answer"]


def test_a_needle_among_a_pages_own_facts() -> None:
    """``pages`` as the needle's filler: one generated page, the needle a paragraph of its own, every stated value
    (the needle's and the page's) at its span, the needle asked first and the page's facts after it."""
    docs = hs.make_needle_fact_docs(30, 3, styles=["pages"], forms=["number", "entry"])
    assert docs == hs.make_needle_fact_docs(30, 3, styles=["pages"], forms=["number", "entry"])  # deterministic
    for doc in docs:
        assert doc["style"] == "pages" and len(doc["facts"]) > 1
        for key, (a, b) in doc["spans"].items():
            assert doc["text"][a:b] == doc["facts"][key], key
        form = next(k for k in doc["facts"] if not k.startswith("page."))
        assert doc["qa"][0]["answer"] == doc["facts"][form] and 1 <= len(doc["qa"]) - 1 <= 2
        a, _ = doc["spans"][form]
        paragraph = doc["text"][doc["text"].rfind("\n\n", 0, a) + 2 : doc["text"].find("\n\n", a)]
        assert doc["entity"] in paragraph and not paragraph.startswith("#")  # its own paragraph, not a heading
    # mixed with other styles, the other styles' documents are drawn as before (old recipes list no pages)
    assert not [d for d in hs.make_needle_fact_docs(20, 3, styles=["classic"], forms=["number"]) if len(d["facts"]) > 1]
