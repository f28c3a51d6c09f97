"""``agent-sleep internalize`` end to end on a tiny model: register, ask --adapter, deploy, and bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sleep.cli import main as cli_main
from agent_sleep.config import get_settings
from agent_sleep.store import ExperienceStore
from tests.helpers_models import make_tiny_model_dir

DOC = "The logo of Velmora Works is teal. Velmora Works was founded by Ansel Trell in Quorvik.\n"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model folder, trained-looking checkpoint, checkpoint for other base weights)."""
    import torch

    from agent_sleep.generators.checkpoint import save_checkpoint
    from agent_sleep.generators.hypernet import HyperConfig, HyperNet
    from agent_sleep.models.loader import load_base_model

    root = tmp_path_factory.mktemp("internalize")
    folder = make_tiny_model_dir(root)
    handle = load_base_model(str(folder), device="cpu")
    torch.manual_seed(0)
    shape = {"layers": [0, 1], "rank": 4, "encoder_layers": 1, "latent_dim": 32, "n_latents": 4, "n_heads": 2,
             "n_blocks": 1}  # fmt: skip
    config = HyperConfig.for_model(handle.model, base_model_id=str(folder), base_content_hash=handle.content_hash,
                                   **shape)  # fmt: skip
    net = HyperNet(config)
    with torch.no_grad():
        net.scale_B.normal_(0, 0.5)  # a fresh net is an exact no-op; make the adapter change something
    good = save_checkpoint(net, root / "ckpt", version="test")
    other = HyperConfig.for_model(handle.model, base_model_id="other", base_content_hash="cd" * 32, **shape)
    wrong = save_checkpoint(HyperNet(other), root / "ckpt-other", version="test")
    return folder, good, wrong


@pytest.fixture
def env(tiny: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, Path]]:
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(tiny[0]))  # what ask and deploy load too
    yield tiny


def _doc(tmp_path: Path, content: bytes | str = DOC, name: str = "policy.md") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def _state() -> tuple[int, int]:
    """(documents in the store, adapter versions in the registry)."""
    from agent_sleep.registry import AdapterRegistry

    store = ExperienceStore(settings=get_settings())
    try:
        return len(store.documents()), len(AdapterRegistry(store).adapters())
    finally:
        store.close()


def test_internalize_registers_a_skill_that_ask_and_deploy_use(
    env: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_sleep.adapters import read_adapter

    _, ckpt, _ = env
    doc = _doc(tmp_path)
    argv = ["internalize", str(doc), "--name", "velmora", "--checkpoint", str(ckpt), "--chunk-tokens", "8",
            "--max-kept", "0"]  # every chunk: no cap
    assert cli_main.main([*argv, "--json", "--agent", "helpdesk"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"name", "version", "path", "seconds", "chunks", "rank", "adapter_bytes", "document_sha256"} <= out.keys()
    assert (out["name"], out["version"], out["adapter"]) == ("velmora", 1, "velmora@v1")
    assert out["chunks"] > 1 and out["rank"] == 4 * out["chunks"]  # chunk LoRAs concatenated along rank
    assert out["chunks_dropped"] == 0  # no chunk gate in this checkpoint, no cap
    assert out["adapter_bytes"] > 0 and math.isfinite(out["seconds"]) and out["seconds"] > 0
    artifact = read_adapter(out["path"])
    assert artifact.manifest is not None and artifact.manifest.generator.name == "d2l"
    assert artifact.manifest.skill == "velmora" and artifact.manifest.version == 1

    store = ExperienceStore(settings=get_settings())
    [stored] = store.documents()
    assert stored.content == DOC and stored.content_hash == out["document_sha256"]
    assert artifact.manifest.sources.documents[0] == stored.id
    store.close()

    # The same document with other options: a new version, human-readable output with the next commands.
    assert cli_main.main([*argv[:-1], "16"]) == 0
    text = capsys.readouterr().out
    assert "velmora@v2" in text and "agent-sleep deploy velmora@v2" in text

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What colour is the logo of Velmora Works?"}\n')
    assert cli_main.main(["ask", "--adapter", "velmora", "--questions", str(questions), "--max-new-tokens", "3"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert row["stack"] and "velmora@v2" in row["stack"]

    assert cli_main.main(["deploy", "velmora@v1", "--agent", "helpdesk", "--max-delta-norm", "1000", "--json"]) == 0
    deployed = json.loads(capsys.readouterr().out)
    assert deployed["status"] == "deployed"
    assert [i["adapter"] for i in deployed["deployment"]["stack"]["items"]] == ["velmora@v1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "empty"),
        (" \n\t\n", "empty"),
        (b"PK\x03\x04\x00\x00binary\x00zip", "binary"),
        (b"caf\xe9 au lait, latin-1 text", "not valid UTF-8"),
    ],
)
def test_bad_documents_exit_1_and_register_nothing(
    env: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    content: bytes | str | None, message: str,
) -> None:  # fmt: skip
    path = tmp_path / "absent.md" if content is None else _doc(tmp_path, content)
    assert cli_main.main(["internalize", str(path), "--name", "bad", "--checkpoint", str(env[1])]) == 1
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert _state() == (0, 0)


def test_folder_bad_name_and_bad_chunk_size(env: tuple[Path, Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    ckpt = str(env[1])
    assert cli_main.main(["internalize", str(tmp_path), "--name", "x", "--checkpoint", ckpt]) == 1
    assert "is a folder" in capsys.readouterr().err
    assert cli_main.main(["internalize", str(_doc(tmp_path)), "--name", "../escape", "--checkpoint", ckpt]) == 1
    assert "name '../escape'" in capsys.readouterr().err
    assert cli_main.main(["internalize", str(_doc(tmp_path)), "--name", "x", "--chunk-tokens", "0"]) == 2
    assert _state() == (0, 0)


def test_max_chunks_flag_bounds_the_document(env: tuple[Path, Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["internalize", str(_doc(tmp_path)), "--name", "x", "--checkpoint", str(env[1]), "--chunk-tokens", "8"]
    assert cli_main.main([*argv, "--max-chunks", "1"]) == 1
    err = capsys.readouterr().err
    assert f"document {tmp_path / 'policy.md'}: the document has" in err
    assert "over max_chunks=1" in err and "--max-chunks" in err
    assert _state() == (0, 0)
    assert cli_main.main([*argv, "--max-chunks", "64", "--json"]) == 0
    assert 1 < json.loads(capsys.readouterr().out)["chunks"] <= 64
    assert cli_main.main([*argv, "--max-chunks", "0"]) == 2


def test_missing_or_foreign_checkpoints_are_refused(env: tuple[Path, Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from agent_sleep.generators import d2l

    monkeypatch.setattr(d2l, "DEFAULT_CHECKPOINT", tmp_path / "not-trained-yet")
    assert cli_main.main(["internalize", str(_doc(tmp_path)), "--name", "x"]) == 1
    assert "no trained D2L checkpoint" in capsys.readouterr().err
    assert cli_main.main(["internalize", str(_doc(tmp_path)), "--name", "x", "--checkpoint", str(env[2])]) == 1
    assert "trained for base model 'other'" in capsys.readouterr().err
    assert cli_main.main(["internalize", str(_doc(tmp_path)), "--name", "x", "--checkpoint", str(tmp_path)]) == 1
    assert "not a D2L checkpoint" in capsys.readouterr().err
    assert _state() == (0, 0)


@pytest.mark.model
def test_real_internalize_with_the_committed_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    from agent_sleep.generators.checkpoint import CONFIG_FILE
    from agent_sleep.generators.d2l import DEFAULT_CHECKPOINT

    if not (DEFAULT_CHECKPOINT / CONFIG_FILE).is_file():
        pytest.skip(f"no trained D2L checkpoint at {DEFAULT_CHECKPOINT} yet")
    doc = Path(__file__).resolve().parents[2] / "evals" / "docs" / "venue_guide.md"
    assert cli_main.main(["internalize", str(doc), "--name", "venue", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    from agent_sleep.generators.checkpoint import read_checkpoint_config

    hyper = read_checkpoint_config(DEFAULT_CHECKPOINT)["hyper"]
    # one rank-r block per chunk, plus the document-independent block when the checkpoint has one
    assert out["version"] == 1
    assert out["rank"] == hyper["rank"] * (out["chunks"] + int(bool(hyper.get("use_bias"))))
    assert math.isfinite(out["seconds"]) and out["seconds"] > 0  # how fast: evals/bench_d2l.py
    assert cli_main.main(["ask", "--adapter", "venue", "What is the Wi-Fi password at Corvid Hall?", "--json",
                          "--max-new-tokens", "16"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["stack"]


def test_internalize_with_sections_keeps_every_chunk_routed_and_ask_reads_one(
    env: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_sleep.adapters import read_adapter

    _, ckpt, _ = env
    long_doc = _doc(tmp_path, " ".join(f"Bay {n} of the Orrin yard has keypad code {n}{n}{n}." for n in range(1, 9)),
                    name="yard.md")  # fmt: skip
    argv = ["internalize", str(long_doc), "--name", "yard", "--checkpoint", str(ckpt), "--chunk-tokens", "8",
            "--max-kept", "2", "--json"]  # fmt: skip
    assert cli_main.main(argv) == 0
    capped = json.loads(capsys.readouterr().out)
    assert (capped["chunks"], capped["sections"]) == (2, 0)
    assert read_adapter(capped["path"]).manifest.routing is None  # type: ignore[union-attr]
    assert cli_main.main([*argv, "--sections"]) == 0  # another option: a new version, not the capped one reused
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 2 and out["chunks"] == out["sections"] > 2 and out["chunks_dropped"] == 0
    spec = read_adapter(out["path"]).manifest.routing  # type: ignore[union-attr]
    assert spec is not None and len(spec.sections) == out["sections"]
    # routed as the sleep cycle routes a d2l adapter, not at the generic default
    assert (spec.threshold, spec.name_bonus, spec.group) == (0.45, 0.1, "d2l")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is the keypad code of bay 7 of the Orrin yard?"}\n')
    assert cli_main.main(["ask", "--adapter", "yard@v2", "--questions", str(questions), "--max-new-tokens", "3"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert row["stack"].startswith("yard@v2#")  # one section served, not the whole adapter
