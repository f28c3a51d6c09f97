"""Generators by name, and both built-ins as one Generator Protocol, on a tiny random Llama."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agent_sleep.adapters import read_adapter
from agent_sleep.errors import ConfigError, InvalidInputError
from agent_sleep.generators import gradient_cd as cd
from agent_sleep.generators.checkpoint import save_checkpoint
from agent_sleep.generators.d2l import D2LGenerator
from agent_sleep.generators.hypernet import HyperConfig, HyperNet
from agent_sleep.generators.registry import (
    _TARGETS,
    available_generators,
    generator_factory,
    get_generator,
    register_generator,
)
from agent_sleep.interfaces import GenerationRequest, Generator
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from tests.helpers_models import make_tiny_model_dir
from tests.helpers_protocols import protocol_mismatches

DOC = "The capital of France is Paris. The weather today is sunny."
QA = [{"question": "What is the capital of France?", "answer": "Paris"},
      {"question": "What is the weather today?", "answer": "sunny"}]  # fmt: skip
FAST = cd.CDSettings(rank=4, lr=1e-2, max_steps=3, time_budget_s=60, max_answer_tokens=6)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def handle(tmp_path_factory: pytest.TempPathFactory) -> BaseModelHandle:
    return load_base_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("registry"))), device="cpu")


@pytest.fixture(scope="module")
def d2l_checkpoint(handle: BaseModelHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = HyperConfig.for_model(handle.model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                   layers=[0, 1], rank=4, encoder_layers=1, latent_dim=32, n_latents=4, n_heads=2,
                                   n_blocks=1)  # fmt: skip
    net = HyperNet(config).eval()
    with torch.no_grad():
        net.scale_B.normal_(0, 3.0)  # a "trained" net: B is not zero
    return save_checkpoint(net, tmp_path_factory.mktemp("d2l") / "ckpt", version="t1")


# ---------------------------------------------------------------- the registry


def test_names_and_did_you_mean() -> None:
    assert available_generators() == ["d2l", "gradient_cd", "sft", "t2l"]
    with pytest.raises(ConfigError, match=r"unknown generator 'gradient-cd'; did you mean 'gradient_cd'\?"):
        get_generator("gradient-cd")
    with pytest.raises(ConfigError, match=r"unknown generator 'D2L'; did you mean 'd2l'\?"):
        generator_factory("D2L")
    with pytest.raises(ConfigError, match=r"unknown generator 'magic' \(available: d2l, gradient_cd, sft, t2l\)$"):
        get_generator("magic")


def test_listing_names_imports_no_generator() -> None:
    code = ("import sys\nfrom agent_sleep.generators.registry import available_generators\n"
            "assert available_generators()\n"
            "print(sorted(m for m in ('torch', 'agent_sleep.generators.d2l', 'agent_sleep.generators.gradient_cd',"
            " 'agent_sleep.generators.sft', 'agent_sleep.generators.t2l')"
            " if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_register_refuses_duplicates_bad_names_and_broken_targets(monkeypatch: pytest.MonkeyPatch,
                                                                  handle: BaseModelHandle) -> None:  # fmt: skip
    monkeypatch.setattr("agent_sleep.generators.registry._TARGETS", dict(_TARGETS))
    with pytest.raises(ConfigError, match="already registered"):
        register_generator("d2l", "agent_sleep.generators.d2l:D2LGenerator.load")
    with pytest.raises(ConfigError, match="lowercase"):
        register_generator("My Gen", "x:y")
    with pytest.raises(ConfigError, match="must look like"):
        register_generator("mine", "agent_sleep.generators.d2l.D2LGenerator")
    register_generator("missing", "agent_sleep.generators.nowhere:Thing")
    with pytest.raises(ConfigError, match=r"'missing' points to 'agent_sleep.generators.nowhere:Thing'"):
        get_generator("missing")
    register_generator("not_a_generator", "agent_sleep.generators.gradient_cd:CDSettings")
    with pytest.raises(ConfigError, match="built a CDSettings, which lacks the Generator methods"):
        get_generator("not_a_generator")
    register_generator("cd_gold", lambda **kw: cd.GradientCDGenerator(handle, targets="gold", **kw))
    assert available_generators() == ["cd_gold", "d2l", "gradient_cd", "missing", "not_a_generator", "sft", "t2l"]
    assert get_generator("cd_gold", config=FAST).targets == "gold"


# ---------------------------------------------------------------- the built-ins as Generators


def test_d2l_by_name_generates_what_internalize_makes(handle: BaseModelHandle, d2l_checkpoint: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    gen = get_generator("d2l", checkpoint=d2l_checkpoint, handle=handle, chunk_tokens=8)
    assert isinstance(gen, D2LGenerator) and isinstance(gen, Generator)
    assert protocol_mismatches(gen, Generator) == []
    assert (gen.name, gen.version) == ("d2l", "t1")

    result = gen.generate(GenerationRequest(documents=[DOC], probes=["unused by d2l"], budget_seconds=1))
    ref = D2LGenerator.load(d2l_checkpoint, handle=handle).internalize(DOC, chunk_tokens=8)
    assert result.chunks == ref.chunks > 1 and result.rank == ref.rank
    for key, value in ref.tensors.items():
        assert torch.equal(result.tensors[key], value)
    assert gen.internalize(DOC, chunk_tokens=10_000).chunks == 1  # an explicit argument still wins

    folder = gen.write(result, tmp_path / "adapter", sources={"description": "test"}, skill="facts")
    manifest = read_adapter(folder).manifest
    assert manifest is not None and manifest.skill == "facts"
    assert (manifest.generator.name, manifest.generator.version) == ("d2l", "t1")
    assert manifest.sources.documents == [result.document_sha256]

    with pytest.raises(InvalidInputError, match="has none"):
        gen.generate(GenerationRequest())
    both = gen.generate(GenerationRequest(documents=[DOC, DOC]))  # several documents: one adapter of them all
    assert both.chunks == 2 * result.chunks and both.document_sha256s == (result.document_sha256,) * 2


def test_gradient_cd_by_name_is_the_distill_run(handle: BaseModelHandle, tmp_path: Path) -> None:
    gen = get_generator("gradient_cd", handle=handle, config=FAST, targets="gold", progress=False)
    assert isinstance(gen, cd.GradientCDGenerator) and isinstance(gen, Generator)
    assert protocol_mismatches(gen, Generator) == []
    assert (gen.name, gen.version) == ("gradient_cd", cd.GENERATOR_VERSION)

    result = gen.generate(GenerationRequest(documents=[DOC], probes=QA))
    ref = cd.distill(handle, DOC, QA, targets="gold", settings=FAST, progress=False)
    assert (result.steps, result.answers, result.first_loss) == (ref.steps, ref.answers, ref.first_loss)
    for key, value in ref.tensors.items():
        assert torch.equal(result.tensors[key], value)

    folder = gen.write(result, tmp_path / "cd", sources={"documents": ["doc-1"]}, skill="france")
    artifact = read_adapter(folder)
    assert artifact.manifest is not None and artifact.manifest.skill == "france"
    assert (artifact.manifest.generator.name, artifact.manifest.sources.documents) == ("gradient_cd", ["doc-1"])
    assert artifact.manifest.base_model.content_hash == handle.content_hash
    plain = read_adapter(cd.write(result, tmp_path / "plain", handle=handle))  # the module function still works
    assert plain.manifest is not None and plain.manifest.skill is None

    budgeted = get_generator("gradient_cd", handle=handle, config=FAST).generate(
        GenerationRequest(documents=[DOC], probes=[q["question"] for q in QA], budget_seconds=30))
    assert budgeted.targets == "teacher" and budgeted.settings.time_budget_s == 30 and budgeted.steps == 3

    with pytest.raises(InvalidInputError, match="at least one training question"):
        gen.generate(GenerationRequest(documents=[DOC]))
    with pytest.raises(InvalidInputError, match="one document"):
        gen.generate(GenerationRequest(probes=QA))
    with pytest.raises(InvalidInputError, match="targets must be"):
        cd.GradientCDGenerator(handle, targets="silver")  # type: ignore[arg-type]

