"""Generation registers candidates: a generated adapter is never live, nor the skill's ``live`` alias, until deployed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agent_sleep.errors import NotFoundError
from agent_sleep.generators.d2l import D2LGenerator, internalize_to_registry
from agent_sleep.generators.hypernet import HyperConfig, HyperNet
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.registry import AdapterRegistry
from tests.helpers_models import make_tiny_model_dir

DOC = "The logo of Velmora Works is teal. Velmora Works was founded by Ansel Trell in Quorvik in 1962."


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> D2LGenerator:
    torch.set_num_threads(1)
    handle: BaseModelHandle = load_base_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("cand"))), device="cpu")
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1)  # fmt: skip
    net = HyperNet(config).eval()
    with torch.no_grad():
        net.scale_B.normal_(0, 3.0)
    return D2LGenerator(net, handle, checkpoint=Path("in-memory"), version="test")


def test_generated_versions_stay_candidates_until_a_deploy(store: Any, generator: D2LGenerator) -> None:
    registry = AdapterRegistry(store)
    v1, _ = internalize_to_registry(registry, DOC, "velmora", generator=generator, chunk_tokens=16)
    assert (v1.name, v1.status, v1.aliases) == ("velmora@v1", "candidate", ("candidate",))
    assert registry.deployments("helpdesk") == [] and registry.live("helpdesk") is None
    with pytest.raises(NotFoundError, match="velmora@live"):
        registry.get("velmora@live")

    registry.deploy("helpdesk", "velmora@v1", reason="reviewed")  # only this makes it live
    live = registry.get("velmora@v1")
    assert (live.status, live.aliases) == ("live", ("candidate", "live"))

    v2, _ = internalize_to_registry(registry, DOC + " It makes bicycles.", "velmora", generator=generator)
    assert (v2.name, v2.status, v2.aliases) == ("velmora@v2", "candidate", ("candidate",))
    assert registry.get("velmora").name == "velmora@v1"  # the skill still resolves to what is live
    assert registry.get("velmora@live").name == "velmora@v1" and registry.get("velmora@candidate").name == "velmora@v2"
    assert [i.adapter for i in registry.live("helpdesk").stack.items] == ["velmora@v1"]  # type: ignore[union-attr]
    assert [d.seq for d in registry.deployments("helpdesk")] == [1]
