"""The agent-sleep command end to end: every subcommand's --help, store commands, errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent_sleep.cli.main import build_parser, main
from agent_sleep.store import ExperienceStore
from agent_sleep.store.engine import head_revision


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths += _subcommand_paths(sub, (*prefix, name))
    return paths


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _subcommand_paths(build_parser())
    for needed in [("init",), ("model", "pull"), ("episodes", "list"), ("episodes", "show"), ("log", "export"),
                   ("log", "import"), ("feedback",), ("ask",), ("demo",)]:
        assert needed in paths
    for path in paths:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0
        assert "usage: agent-sleep" in capsys.readouterr().out


def test_store_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    base = ["--data-dir", str(tmp_path / "d"), "--db", db_url]
    assert main([*base, "init"]) == 0
    assert f"schema {head_revision()}" in capsys.readouterr().out
    assert main([*base, "episodes", "list"]) == 0
    assert "no episodes" in capsys.readouterr().out

    store = ExperienceStore(db_url)
    eid = store.start_episode("helpdesk", thread_id="t1")
    store.append_events(eid, [{"kind": "user_message", "content": "where is A1?"},
                              {"kind": "assistant_message", "content": "shipped"}])
    store.end_episode(eid)

    assert main([*base, "feedback", eid, "--score", "0.9", "--comment", "good", "--outcome", "resolved"]) == 0
    capsys.readouterr()
    assert main([*base, "episodes", "list", "--agent", "helpdesk"]) == 0
    out = capsys.readouterr().out
    assert eid in out and "0.90" in out and "resolved" in out
    assert main([*base, "episodes", "list", "--json", "--min-score", "0.5", "--since", "1h"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [eid] and rows[0]["n_events"] == 2
    assert main([*base, "episodes", "show", eid]) == 0
    out = capsys.readouterr().out
    assert "where is A1?" in out and "score=0.9" in out

    export = tmp_path / "log.jsonl"
    assert main([*base, "log", "export", "-o", str(export)]) == 0
    other = ["--data-dir", str(tmp_path / "d2")]
    assert main([*other, "log", "import", str(export)]) == 0
    assert "imported 1 episodes, 2 events, 1 feedback" in capsys.readouterr().out
    assert main([*other, "episodes", "show", eid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["content"] for e in shown["events"]] == ["where is A1?", "shipped"]

    doc = tmp_path / "policy.md"
    doc.write_text("Refunds within 30 days.")
    assert main([*base, "documents", "add", str(doc), "--source", "kb/policy"]) == 0
    assert "kb/policy v1" in capsys.readouterr().out


def test_errors_are_clear_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--data-dir", str(tmp_path / "d")]
    assert main([*base, "init"]) == 0
    capsys.readouterr()
    assert main([*base, "episodes", "show", "missing-id"]) == 1
    assert "no episode with id 'missing-id'" in capsys.readouterr().err
    assert main([*base, "feedback", "missing-id", "--score", "1"]) == 1
    assert "missing-id" in capsys.readouterr().err
    assert main([*base, "episodes", "list", "--since", "yesterday-ish"]) == 2  # bad usage (test_cli_consistency.py)
    assert "not a time" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"kind": "episode"\n')
    assert main([*base, "log", "import", str(bad)]) == 1
    assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err
    assert main([*base, "--db", "postgresql+psycopg://x:pw@127.0.0.1:1/db", "episodes", "list"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to database" in err and "pw" not in err


def test_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "agent-sleep"
    out = subprocess.run([str(exe), "--data-dir", str(tmp_path), "init"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "database" in out.stdout


def test_import_is_light() -> None:
    code = ("import sys, agent_sleep, agent_sleep.capture.recorder, agent_sleep.store; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'lm_eval') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
