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
    runs = RunStore(world.store)
    claim = runs.claim(AGENT, owner="test", config=config.model_dump(mode="json"), alive=lambda _: False,
                       folder=lambda run_id: str(tmp_path / "runs" / run_id))  # fmt: skip
    ctx = RunContext(run_id=claim.run.id, owner="test", agent=AGENT, config=config, registry=world.registry,
                     runs=runs, folder=tmp_path / "runs" / claim.run.id, deadline=time.monotonic() + 600, say=lambda _: None,
                     make_runtime=lambda: world.runtime)  # fmt: skip
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
