"""The generate stage with a d2l skill of several documents (#14): d2l gets them one by one and makes ONE adapter
of them all (each document chunked and gated on its own, the bias block once), routed by all their sentences; a
generator that reads one document still gets them joined. On each backend, a tiny random model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from agent_sleep.consolidation.context import RunContext
from agent_sleep.consolidation.generation import generate, generation_request
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.generators.d2l import D2LGenerator
from agent_sleep.generators.hypernet import HyperConfig, HyperNet
from agent_sleep.selectors.plan import ConsolidationPlan, PlannedDocument, PlannedProbe, SkillPlan
from tests.consolidation.conftest import AGENT, World, fast_config

DOCS = (PlannedDocument(id="d1", source="kb/velmora.md", version=1, title="Velmora",
                        text="The logo of Velmora Works is teal. Velmora Works was founded by Ansel Trell."),
        PlannedDocument(id="d2", source="kb/harlow.md", version=1,
                        text="Harlow Vane sells copper kettles. The kettles cost 41 crowns each."))  # fmt: skip
SKILL = SkillPlan(skill="kb", generator="d2l", documents=DOCS,
                  probes=(PlannedProbe(question="What colour is the Velmora logo?", answer="teal", origin="document",
                                       source_kind="document", source_id="d1"),))  # fmt: skip


def _tiny_d2l(handle: Any) -> D2LGenerator:
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1, use_bias=True)  # fmt: skip
    net = HyperNet(config).eval()
    with torch.no_grad():
        net.scale_B.normal_(0, 0.5)
        net.bias_B.normal_(0, 0.1)
    return D2LGenerator(net, handle, checkpoint=Path("in-memory"), version="test")


@pytest.fixture
def tiny_d2l(tiny_handle: Any) -> Iterator[D2LGenerator]:
    """TEST CODE: ``d2l`` built on the tiny model (the committed checkpoint belongs to SmolLM2), restored after."""
    from agent_sleep.generators.registry import _TARGETS, register_generator

    gen = _tiny_d2l(tiny_handle)
    before = _TARGETS["d2l"]
    register_generator("d2l", lambda handle, **_: gen, replace=True)
    yield gen
    register_generator("d2l", before, replace=True)


def _context(world: World, config: Any, tmp_path: Path) -> tuple[RunContext, RunStore]:
    """A claimed run of ``config`` on ``world`` (its registry and runtime), folder under ``tmp_path``."""
    runs = RunStore(world.store)
    claim = runs.claim(AGENT, owner="test", config=config.model_dump(mode="json"), alive=lambda _: False,
                       folder=lambda run_id: str(tmp_path / "runs" / run_id))  # fmt: skip
    ctx = RunContext(run_id=claim.run.id, owner="test", agent=AGENT, config=config, registry=world.registry,
                     runs=runs, folder=tmp_path / "runs" / claim.run.id, deadline=time.monotonic() + 600,
                     say=lambda _: None, make_runtime=lambda: world.runtime)  # fmt: skip
    return ctx, runs


def test_only_d2l_gets_the_documents_one_by_one() -> None:
    apart = generation_request(SKILL, None, separate_documents=True)
    joined = generation_request(SKILL, None)
    assert apart.documents == ("# Velmora\n\n" + DOCS[0].text, DOCS[1].text)
    assert joined.documents == ("\n\n".join(apart.documents),)  # gradient_cd and the others: one text, as before
    assert generation_request(SKILL.model_copy(update={"documents": DOCS[:1]}), None).documents == apart.documents[:1]


@pytest.mark.parametrize("routing", [None, {"threshold": 0.55}], ids=["default-config", "routing-block"])
def test_a_d2l_skill_of_two_documents_gets_one_routed_adapter_of_both(
    world: World, tiny_d2l: D2LGenerator, tmp_path: Path, routing: Any
) -> None:
    config = fast_config() if routing is None else fast_config(routing=routing)  # d2l is routed by default
    ctx, runs = _context(world, config, tmp_path)
    runs.begin_stage(ctx.run_id, "generate", owner="test")
    result = generate(ctx, ConsolidationPlan(agent=AGENT, skills=(SKILL,)), ["kb"], {})

    entry = result["skills"]["kb"]
    assert entry["status"] == "generated", entry
    record = world.registry.get(entry["adapter"])
    manifest = json.loads((Path(record.path) / "manifest.json").read_text())
    assert len(manifest["generator"].get("document_sha256s", [])) == 2  # two documents, not one joined text
    texts = generation_request(SKILL, None, separate_documents=True).documents
    expected = tiny_d2l.internalize_documents(texts)
    assert manifest["generator"]["document_sha256s"] == list(expected.document_sha256s)
    assert manifest["rank"] == expected.rank == 4 * (2 + 1)  # one chunk each, the bias block once
    assert expected.rank != tiny_d2l.internalize("\n\n".join(texts)).rank  # what the stage made before
    assert manifest["sources"]["documents"][:2] == ["d1", "d2"]
    keys = manifest["routing"]["keys"]  # routed by both documents' sentences
    assert "The logo of Velmora Works is teal." in keys and "The kettles cost 41 crowns each." in keys


LONG = PlannedDocument(id="d3", source="kb/yard.md", version=1, text=" ".join(
    f"Bay {n} of the Orrin yard opens at {n} o'clock and its keypad code is {n}{n}{n}." for n in range(1, 13)))
LONG_SKILL = SkillPlan(skill="yard", generator="d2l", documents=(LONG,), probes=tuple(
    PlannedProbe(question=f"What is the keypad code of bay {n} of the Orrin yard?", answer=f"{n}{n}{n}",
                 origin="document", source_kind="document", source_id="d3") for n in (2, 9)))  # fmt: skip


def test_a_long_document_keeps_every_chunk_as_a_routed_section_and_the_gate_scores_each_item_by_its_section(
    world: World, tiny_d2l: D2LGenerator, tmp_path: Path
) -> None:
    """A routed d2l skill whose document would lose chunks to ``max_kept`` keeps them all, each a routed section;
    the gate scores each item with the section its question goes to (``{adapter}#{k}``), as the runtime serves it."""
    from agent_sleep.consolidation.gating import evaluate
    from agent_sleep.runtime.routing import Router, split_section
    from tests.runtime.test_routing import WordEmbedder

    tiny_d2l.chunk_tokens = 16
    n_chunks = len(tiny_d2l.encode_chunks(LONG.text).gates)
    assert n_chunks > tiny_d2l.max_kept  # the cap would drop chunks
    world.runtime.router = Router(WordEmbedder())
    config = fast_config(routing={"threshold": 0.2, "thresholds": {"d2l": 0.2}, "generators": ["d2l"]})
    ctx, runs = _context(world, config, tmp_path)
    plan = ConsolidationPlan(agent=AGENT, skills=(LONG_SKILL,))
    runs.begin_stage(ctx.run_id, "generate", owner="test")
    generated = generate(ctx, plan, ["yard"], {})
    entry = generated["skills"]["yard"]
    assert entry["status"] == "generated", entry
    spec = world.runtime.routing(entry["adapter"])
    assert spec is not None and spec.group == "d2l" and spec.threshold == 0.2
    assert spec.name_bonus == 0.1  # the routing settings' default for d2l
    assert len(spec.sections) == n_chunks  # every chunk, none lost to the cap
    assert spec.keys[0].startswith("Bay 1 of the Orrin yard")  # the stage's keys replace the generator's
    assert world.registry.get(entry["adapter"]).rank == 4 * (n_chunks + 1)

    runs.complete_stage(ctx.run_id, "generate", generated, 1.0, owner="test")
    runs.begin_stage(ctx.run_id, "evaluate", owner="test")
    state = evaluate(ctx, plan, generated["skills"], {})
    labels = [label for label in state["results"] if "#" in label]
    assert labels, list(state["results"])  # items were scored by a section of the adapter, not all of it
    sections = {split_section(label)[1] for label in labels}
    assert sections <= set(range(n_chunks))
    asked = world.runtime.router.sections(entry["adapter"], spec, [p.question for p in LONG_SKILL.probes])
    assert {int(k) for k in asked} <= sections  # each probe's own section was scored


def test_a_capped_long_document_is_routed_by_the_chunks_it_kept(world: World, tiny_d2l: D2LGenerator,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """Sections off (a d2l setting): the cap leaves chunks out, and the adapter is routed by the sentences of the
    chunks it kept, not by the document's first sentences (which may all lie in chunks left out)."""
    tiny_d2l.chunk_tokens = 16
    config = fast_config(generators={"d2l": {"settings": {"sections": False}}})
    ctx, runs = _context(world, config, tmp_path)
    runs.begin_stage(ctx.run_id, "generate", owner="test")
    entry = generate(ctx, ConsolidationPlan(agent=AGENT, skills=(LONG_SKILL,)), ["yard"], {})["skills"]["yard"]
    assert entry["status"] == "generated", entry
    assert tiny_d2l.sections is False  # the setting is the user's: the stage did not turn sections on
    made = tiny_d2l.internalize(LONG.text)
    assert made.dropped > 0 and made.keys and made.sections == ()
    spec = world.runtime.routing(entry["adapter"])
    assert spec is not None and spec.keys == list(made.keys) and spec.sections == []
