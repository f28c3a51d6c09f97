"""``agent-sleep skill create`` end to end on a tiny model: register, ask --adapter, deploy, and bad input."""

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

SKILL = "Start every answer with 'Verdict:'"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # tiny models: threads cost more than they save


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model folder, trained-looking T2L checkpoint, T2L checkpoint for other base weights), written here."""
    import torch

    from agent_sleep.generators.checkpoint import save_checkpoint
    from agent_sleep.generators.t2l_net import T2L_FORMAT, T2LConfig, T2LNet
    from agent_sleep.models.loader import load_base_model

    root = tmp_path_factory.mktemp("skill")
    folder = make_tiny_model_dir(root)
    handle = load_base_model(str(folder), device="cpu")
    torch.manual_seed(0)
    shape = {"layers": [0, 1], "rank": 4, "encoder": "base-mean", "emb_dim": 32, "task_dim": 16, "pos_dim": 8,
             "head_in": 32, "n_blocks": 1}  # fmt: skip
    config = T2LConfig.for_model(handle.model, base_model_id=str(folder), base_content_hash=handle.content_hash,
                                 **shape)  # fmt: skip
    net = T2LNet(config)
    with torch.no_grad():
        for head in net.heads:
            head.weight.normal_(0, 0.5)  # a fresh net is an exact no-op; make the adapter change something
    good = save_checkpoint(net, root / "ckpt", version="test", fmt=T2L_FORMAT)
    other = T2LConfig.for_model(handle.model, base_model_id="other", base_content_hash="cd" * 32, **shape)
    wrong = save_checkpoint(T2LNet(other), root / "ckpt-other", version="test", fmt=T2L_FORMAT)
    return folder, good, wrong


@pytest.fixture
def env(tiny: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, Path]]:
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(tiny[0]))  # what ask and deploy load too
    yield tiny


def _versions() -> int:
    from agent_sleep.registry import AdapterRegistry

    store = ExperienceStore(settings=get_settings())
    try:
        return len(AdapterRegistry(store).adapters())
    finally:
        store.close()


def test_skill_create_registers_a_skill_that_ask_and_deploy_use(
    env: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_sleep.adapters import read_adapter

    _, ckpt, _ = env
    argv = ["skill", "create", SKILL, "--name", "verdict", "--checkpoint", str(ckpt)]
    assert cli_main.main([*argv, "--json", "--agent", "helpdesk"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"name", "version", "path", "seconds", "rank", "adapter", "description", "adapter_bytes"} <= out.keys()
    assert (out["name"], out["version"], out["adapter"], out["rank"]) == ("verdict", 1, "verdict@v1", 4)
    assert out["description"] == SKILL + "." and out["generator"] == "t2l/test" and out["agent"] == "helpdesk"
    assert out["adapter_bytes"] > 0 and math.isfinite(out["seconds"]) and out["seconds"] > 0
    artifact = read_adapter(out["path"])
    assert artifact.manifest is not None and artifact.manifest.generator.name == "t2l"
    assert artifact.manifest.skill == "verdict" and artifact.manifest.sources.description == SKILL + "."

    assert out["reused"] is False

    # Human-readable output names the next commands.
    assert cli_main.main([*argv[:2], "Answer in capital letters.", *argv[3:]]) == 0
    text = capsys.readouterr().out
    assert "verdict@v2" in text and "agent-sleep deploy verdict@v2" in text and "ask --adapter verdict@v2" in text

    # The same command again registers nothing new: it names the version it made before.
    before = _versions()
    assert cli_main.main([*argv, "--json", "--agent", "helpdesk"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["adapter"], again["reused"], again["path"]) == ("verdict@v1", True, out["path"]) and _versions() == before
    assert cli_main.main([*argv[:2], "Answer in capital letters.", *argv[3:]]) == 0
    assert "unchanged: verdict@v2 was made from this description before" in capsys.readouterr().out

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is the capital of France?"}\n{"question": "What is 2 plus 2?"}\n')
    assert cli_main.main(["ask", "--adapter", "verdict@v1", "--questions", str(questions),
                          "--max-new-tokens", "3"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(rows) == 2 and all("verdict@v1" in row["stack"] for row in rows)
    assert cli_main.main(["ask", "--adapter", "verdict", "What is 2 plus 2?", "--max-new-tokens", "3",
                          "--json"]) == 0  # fmt: skip
    assert "verdict@v" in json.loads(capsys.readouterr().out)["stack"]

    assert cli_main.main(["deploy", "verdict@v1", "--agent", "helpdesk", "--max-delta-norm", "1000", "--json"]) == 0
    deployed = json.loads(capsys.readouterr().out)
    assert deployed["status"] == "deployed"
    assert [i["adapter"] for i in deployed["deployment"]["stack"]["items"]] == ["verdict@v1"]


@pytest.mark.parametrize(("description", "message"), [
    ("", "empty"), ("   \n ", "empty"), ("x" * 1001, "1001 characters"), ("a\x07b", "control characters"),
])  # fmt: skip
def test_bad_descriptions_exit_1_and_register_nothing(env: tuple[Path, Path, Path], description: str, message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, ckpt, _ = env
    code = cli_main.main(["skill", "create", description, "--name", "s", "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert _versions() == 0


def test_other_base_model_and_missing_checkpoint_are_refused(env: tuple[Path, Path, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, _, wrong = env
    assert cli_main.main(["skill", "create", SKILL, "--name", "s", "--checkpoint", str(wrong)]) == 1
    assert "trained for base model 'other'" in capsys.readouterr().err
    monkeypatch.setattr("agent_sleep.generators.t2l.DEFAULT_CHECKPOINT", tmp_path / "none")
    assert cli_main.main(["skill", "create", SKILL, "--name", "s"]) == 1
    assert "no trained T2L checkpoint" in capsys.readouterr().err
    assert cli_main.main(["skill", "create", SKILL, "--name", "Bad Name!", "--checkpoint", str(wrong)]) == 1
    assert "name" in capsys.readouterr().err
    assert _versions() == 0
    assert cli_main.main(["skill", "create", SKILL]) == 2  # --name is required: usage error
