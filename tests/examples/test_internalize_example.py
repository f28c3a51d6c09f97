"""The Doc-to-LoRA example runs end to end: internalise, register, ask with and without the adapter."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from agent_sleep.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "02_internalize_a_document.py"


def test_example_with_a_tiny_model_and_a_fresh_hypernetwork(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import torch

    from agent_sleep.generators.d2l import D2LGenerator
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.store import ExperienceStore
    from tests.helpers_models import make_tiny_model_dir

    torch.set_num_threads(1)
    settings = Settings(data_dir=tmp_path / "data")
    handle = load_base_model(str(make_tiny_model_dir(tmp_path)), device="cpu")
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2, n_blocks=1)
    gen = D2LGenerator(HyperNet(config).eval(), handle, checkpoint=Path("fresh"), version="test")
    rows = runpy.run_path(str(EXAMPLE), run_name="example")["main"](settings=settings, handle=handle,
                                                                    generator=gen, max_new_tokens=4)  # fmt: skip
    assert [r["question"] for r in rows] and all(r["gold"] for r in rows)
    # a fresh hypernetwork is an exact no-op: the adapter changes no answer
    assert all(r["adapter"] == r["base"] for r in rows)
    store = ExperienceStore(settings=settings)
    try:
        names = [a.name for a in AdapterRegistry(store).adapters()]
    finally:
        store.close()
    assert names == ["library-notice@v1"]
    assert "internalized" in capsys.readouterr().out
