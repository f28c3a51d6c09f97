"""``agent-sleep model pull|info`` and ``agent-sleep ask`` on a tiny offline model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agent_sleep.cli import model_cmds
from agent_sleep.errors import AgentSleepError, InvalidInputError
from agent_sleep.models.loader import model_content_hash
from tests.helpers_models import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("cli"))


def run(argv: list[str]) -> int:
    """Parse with only this module's commands registered, the way cli.main dispatches."""
    parser = argparse.ArgumentParser(prog="agent-sleep")
    model_cmds.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_model_pull_prints_path_and_hash(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["model", "pull", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert f"path  {tiny_dir}" in out and f"hash  {model_content_hash(tiny_dir)}" in out


def test_model_info_json(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["model", "info", str(tiny_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["content_hash"] == model_content_hash(tiny_dir)
    assert info["model_type"] == "llama" and info["num_hidden_layers"] == 2
    assert info["weights_bytes"] > 0
    assert run(["model", "info", str(tiny_dir)]) == 0
    assert "content_hash" in capsys.readouterr().out


def test_ask_plain_and_json(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ask", "hello?", "--model", str(tiny_dir), "--max-new-tokens", "4"]) == 0
    plain = capsys.readouterr().out
    assert run(["ask", "hello?", "--model", str(tiny_dir), "--max-new-tokens", "4", "--json", "--system", "hi"]) == 0
    [result] = json_lines(capsys.readouterr().out)
    assert {"answer", "seconds", "model", "content_hash", "output_tokens", "input_tokens"} <= result.keys()
    assert result["content_hash"] == model_content_hash(tiny_dir)
    assert 1 <= result["output_tokens"] <= 4
    assert plain.endswith("\n")


def test_ask_questions_file(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qs = tmp_path / "q.jsonl"
    qs.write_text('{"question": "one?"}\n\n{"question": "two?", "id": "b"}\n')
    assert run(["ask", "--questions", str(qs), "--model", str(tiny_dir), "--max-new-tokens", "3"]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [(r["line"], r["question"]) for r in rows] == [(1, "one?"), (3, "two?")]
    assert rows[1]["id"] == "b" and all("answer" in r and "seconds" in r for r in rows)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "ok"}\nnot json\n', "q.jsonl:2: not valid JSON"),
        ('{"question": "ok"}\n{"q": "wrong key"}\n', 'q.jsonl:2: expected an object like {"question": "..."}'),
        ('["a list"]\n', "q.jsonl:1: expected"),
        ("\n\n", "no questions"),
    ],
)
def test_ask_questions_file_errors_name_the_line(tiny_dir: Path, tmp_path: Path, content: str, message: str) -> None:
    qs = tmp_path / "q.jsonl"
    qs.write_text(content)
    with pytest.raises(InvalidInputError) as info:
        run(["ask", "--questions", str(qs), "--model", str(tiny_dir)])
    assert message in str(info.value)


def test_ask_usage_errors(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ask"]) == 2
    assert "QUESTION or --questions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["ask", "hi", "--max-new-tokens", "0"])
    with pytest.raises(AgentSleepError, match="cannot read questions file"):
        run(["ask", "--questions", str(tmp_path / "absent.jsonl")])


def test_main_entry_point_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent_sleep.cli.main import main

    assert main(["model", "info", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.model
def test_real_ask_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ask", "What is the capital of France?", "--json", "--max-new-tokens", "32"]) == 0
    [result] = json_lines(capsys.readouterr().out)
    assert "Paris" in result["answer"]
    assert result["seconds"] > 0 and result["model"] == "smollm2-135m-instruct"
