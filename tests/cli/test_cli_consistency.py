"""The CLI behaves the same everywhere (issue #10), driven through the real entry point ``agent_sleep.cli.main:main``.

Global options before or after the command; help on every option; ``--json`` on every data command with one
timestamp format; exit 2 for every usage error, without a traceback; empty lists say so; a status line on
stderr for slow commands; "did you mean" for typos; the README's CLI table lists every command.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.cli import common
from agent_sleep.cli.main import build_parser, main
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore
from tests.helpers_adapters import write_random
from tests.helpers_models import make_tiny_model_dir

README = Path(__file__).resolve().parents[2] / "README.md"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
# Commands that print no data of their own: a server, the demo, and export (whose output is JSONL already).
NO_JSON = {("serve",), ("demo",), ("log", "export"), ("scheduler",)}  # long-running or file output


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``agent-sleep ARGV``; only --help leaves main through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        assert "--help" in argv and exc.code == 0, argv
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every parser of the CLI by its command path (the top level is ``()``)."""
    found = {prefix: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_leaves(sub, (*prefix, name)))
    return found


def _commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """The runnable commands (parsers without subcommands)."""
    return {path: p for path, p in _leaves(build_parser()).items()
            if path and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)}  # fmt: skip


# ---------------------------------------------------------------- parsers: global options, help


def test_every_parser_takes_the_global_options_and_every_option_has_help() -> None:
    parsers = _leaves(build_parser())
    assert len(parsers) > 25
    for path, parser in parsers.items():
        dests = {a.dest for a in parser._actions}
        assert {"data_dir", "database_url"} <= dests, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in action._choices_actions}
                assert set(helps) == set(action.choices), path
                assert all(h and h.strip() for h in helps.values()), (path, helps)
                continue
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
                f"agent-sleep {' '.join(path)}: {action.option_strings or action.dest} has no help"


def test_help_shows_the_global_options_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for path in _leaves(build_parser()):
        code, out, _ = run([*path, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: agent-sleep {' '.join(path)}".rstrip())
        assert "global options (before or after the command):" in out and "--data-dir DIR" in out, path
    code, out, _ = run(["--help"], capsys)
    assert "Exit codes: 0 ok, 1 error, 2 bad usage, 3 rejected by validation." in " ".join(out.split())


def test_global_options_work_before_or_after_the_command(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["init", "--data-dir", str(a)], capsys)[0] == 0
    assert (a / "experience.sqlite").is_file()
    ExperienceStore(settings=Settings(data_dir=a)).start_episode("helpdesk")
    for argv in (["--data-dir", str(a), "episodes", "list"], ["episodes", "list", "--data-dir", str(a)],
                 ["episodes", "--data-dir", str(a), "list"]):  # fmt: skip
        code, out, _ = run(argv, capsys)
        assert code == 0 and "helpdesk" in out, argv
    # given at both levels, the command's own value wins; a level that omits it changes nothing
    code, out, _ = run(["--data-dir", str(a), "init", "--data-dir", str(b), "--json"], capsys)
    assert code == 0 and json.loads(out)["data_dir"] == str(b.resolve())
    code, out, _ = run(["--data-dir", str(a), "init", "--json"], capsys)
    assert json.loads(out)["data_dir"] == str(a.resolve())
    url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    code, out, _ = run(["init", "--db", url, "--json"], capsys)
    assert code == 0 and json.loads(out)["database"] == url and (tmp_path / "other.sqlite").is_file()


# ---------------------------------------------------------------- --json, one timestamp format


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from agent_sleep.models.loader import load_base_model

    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))
    return folder, load_base_model(str(folder))


@pytest.fixture
def world(tiny: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A data dir with an episode (and a model call), two adapters and the tiny model as the base."""
    from agent_sleep.registry import AdapterRegistry

    folder, handle = tiny
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(folder))
    store = ExperienceStore(settings=Settings())
    eid = store.start_episode("helpdesk", thread_id="t1")
    store.append_events(eid, [{"kind": "user_message", "content": "where is A1?"},
                              {"kind": "assistant_message", "content": "shipped"}])
    store.end_episode(eid)
    reg = AdapterRegistry(store)
    for skill, seed in (("refunds", 1), ("tone", 2)):
        reg.register(write_random(tmp_path / f"src-{skill}", handle, seed=seed), skill)
    store.close()
    doc = tmp_path / "policy.md"
    doc.write_text("Refunds within 30 days.\n")
    return {"episode": eid, "doc": doc, "adapter": write_random(tmp_path / "src-extra", handle, seed=3),
            "model": folder}  # fmt: skip


def _timestamps(value: Any, key: str = "") -> list[str]:
    """Every string under a key that names a time (``*_at``, ``at``), outside free-form payloads."""
    if isinstance(value, dict):
        return [t for k, v in value.items() if k not in ("payload", "meta", "messages")
                for t in _timestamps(v, k)]  # fmt: skip
    if isinstance(value, list):
        return [t for v in value for t in _timestamps(v, key)]
    return [value] if isinstance(value, str) and (key == "at" or key.endswith("_at")) else []


def test_every_data_command_prints_json_with_one_timestamp_format(world: dict[str, Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    eid = world["episode"]
    commands: list[list[str]] = [
        ["init", "--json"],
        ["feedback", eid, "--score", "0.9", "--comment", "good", "--json"],
        ["feedback", eid, "--outcome", "resolved", "--json"],
        ["episodes", "list", "--json"],
        ["episodes", "show", eid, "--model-calls", "--json"],
        ["documents", "add", str(world["doc"]), "--json"],
        ["documents", "list", "--json"],
        ["model", "pull", str(world["model"]), "--json"],
        ["model", "info", str(world["model"]), "--json"],
        ["adapters", "add", str(world["adapter"]), "--skill", "extra", "--json"],
        ["adapters", "list", "--json"],
        ["adapters", "show", "refunds@v1", "--json"],
        ["deploy", "refunds@v1", "tone@v1", "--weight", "tone=0.5", "--agent", "helpdesk", "--no-validate", "--json"],
        ["deploy", "refunds@v1", "--agent", "helpdesk", "--no-validate", "--json"],
        ["adapters", "lineage", "refunds@v1", "--json"],
        ["stacks", "list", "--json"],
        ["stacks", "show", "helpdesk:stack@v1", "--json"],
        ["stacks", "merge", "helpdesk:stack@v1", "--name", "merged", "--max-delta-norm", "1000", "--json"],
        ["rollback", "--agent", "helpdesk", "--no-validate", "--json"],
        ["remove-skill", "tone", "--agent", "helpdesk", "--json"],
        ["adapters", "retire", "tone@v1", "--reason", "replaced", "--json"],
        ["adapters", "approve", "extra@v1", "--json"],
        ["deployments", "--agent", "helpdesk", "--json"],
        ["guard", "check", "--agent", "helpdesk", "--json"],
        ["guard", "history", "--agent", "helpdesk", "--json"],
        ["schedule", "add", "--agent", "helpdesk", "--every", "3600", "--json"],
        ["schedule", "list", "--json"],
        ["report", "--agent", "helpdesk", "--json"],
        ["log", "import", str(_export(world, capsys)), "--json"],
    ]
    groups = {path[0] for path in _commands() if len(path) == 2}
    covered = {tuple(argv[:2]) if argv[0] in groups else (argv[0],) for argv in commands}
    for path, parser in _commands().items():
        assert (path in NO_JSON) != any(a.dest == "json" for a in parser._actions), path
    # ask, internalize and skill create print JSON without timestamps; tests/models/test_model_cmds.py,
    # test_internalize_cli and test_skill_cli check them.
    # sleep and runs need a consolidation run: tests/consolidation/test_sleep_cli.py checks their JSON and times.
    # schedule remove needs the id schedule add printed: tests/scheduling/ checks it.
    assert set(_commands()) - NO_JSON - covered == {("ask",), ("internalize",), ("skill", "create"), ("sleep",),
                                                    ("runs", "list"), ("runs", "show"), ("runs", "explain"),
                                                    ("schedule", "remove")}  # fmt: skip
    stamps = []
    for argv in commands:
        code, out, err = run(argv, capsys)
        assert code == 0, (argv, err)
        values = [json.loads(line) for line in out.splitlines()]
        assert values, argv
        stamps += _timestamps(values)
    assert len(stamps) > 30
    for text in stamps:
        assert ISO_UTC.fullmatch(text), text
        parsed = datetime.fromisoformat(text)
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


def _export(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> Path:
    path = world["doc"].with_name("log.jsonl")
    assert run(["log", "export", "-o", str(path)], capsys)[0] == 0
    return path


def test_iso_utc_is_the_one_format() -> None:
    from datetime import timezone

    naive = datetime(2026, 11, 29, 6, 58, 11, 123456)
    assert common.iso_utc(naive) == "2026-11-29T06:58:11+00:00"
    assert common.iso_utc(naive.replace(tzinfo=timezone(timedelta(hours=2)))) == "2026-11-29T04:58:11+00:00"
    assert common.time_text("2026-11-29T06:58:11.5Z") == "2026-11-29T06:58:11+00:00"


# ---------------------------------------------------------------- usage errors: exit 2, no traceback


@pytest.mark.parametrize("argv", [
    ["episodes", "list", "--since", "yesterday-ish"],
    ["episodes", "list", "--until", "soon"],
    ["episodes", "list", "--limit", "-1"],
    ["episodes", "list", "--limit", "0"],
    ["episodes", "list", "--limit", "ten"],
    ["episodes", "list", "--min-score", "nan"],
    ["log", "export", "--limit", "-5"],
    ["feedback", "EPISODE"],
    ["feedback", "EPISODE", "--score", "2"],
    ["feedback", "EPISODE", "--score", "-0.1"],
    ["feedback", "EPISODE", "--score", "nan"],
    ["feedback", "EPISODE", "--score", "inf"],
    ["feedback", "EPISODE", "--score", "good"],
    ["deploy", "refunds@v1", "--agent", "helpdesk", "--weight", "refunds"],
    ["deploy", "refunds@v1", "--agent", "helpdesk", "--weight", "refunds=lots"],
    ["deploy", "refunds@v1", "--agent", "helpdesk", "--weight", "refunds=0"],
    ["deploy", "refunds@v1", "--agent", "helpdesk", "--weight", "refunds=5"],
    ["rollback", "--agent", "helpdesk", "--max-delta-norm", "0"],
    ["deploy", "refunds@v1", "--agent", "helpdesk", "--max-delta-norm", "-1"],
    ["stacks", "merge", "helpdesk:stack@v1", "--name", "m", "--density", "1.5"],
    ["stacks", "merge", "helpdesk:stack@v1", "--name", "m", "--rank", "0"],
    ["adapters", "list", "--status", "alive"],
    ["serve", "--poll", "0"],
    ["ask"],
    ["internalize", "doc.md"],
])
def test_usage_errors_exit_2_without_a_traceback(argv: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    store = ExperienceStore(settings=Settings())
    eid = store.start_episode("helpdesk")
    argv = [eid if a == "EPISODE" else a for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2, (argv, out, err)
    assert "error:" in err and "Traceback" not in err and "pydantic" not in err
    assert store.feedback(eid) == [] and store.get_episode(eid).outcome is None  # nothing written


def test_usage_error_exits_2_from_the_console_script(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "agent-sleep"
    for argv in (["feedback", "abc", "--score", "nan"], ["feedback", "abc"], ["episodes", "list", "--limit", "-1"]):
        out = subprocess.run([str(exe), "--data-dir", str(tmp_path), *argv], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.returncode == 2, (argv, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_feedback_scores_from_0_to_1_and_outcome_alone(capsys: pytest.CaptureFixture[str]) -> None:
    store = ExperienceStore(settings=Settings())
    eid = store.start_episode("helpdesk")
    for text in ("0", "1", "0.5"):
        code, out, _ = run(["feedback", eid, "--score", text], capsys)
        assert code == 0 and re.fullmatch(r"[0-9a-f]{32}\n", out)
    code, out, _ = run(["feedback", eid.upper(), "--outcome", "resolved"], capsys)
    assert code == 0 and "resolved" in out
    assert [f.score for f in store.feedback(eid)] == [0.0, 1.0, 0.5]
    assert store.get_episode(eid).outcome == "resolved"
    code, _, err = run(["feedback", "no-such-episode", "--score", "1"], capsys)
    assert code == 1 and "no episode with id 'no-such-episode'" in err


def test_feedback_carries_a_correction(capsys: pytest.CaptureFixture[str]) -> None:
    store = ExperienceStore(settings=Settings())
    eid = store.start_episode("helpdesk")
    store.append_events(eid, [{"kind": "user_message", "content": "How long do refunds take?"},
                              {"kind": "assistant_message", "content": "A month."}])
    code, out, _ = run(["feedback", eid, "--correction", "Refunds take 5 business days.", "--json"], capsys)
    assert code == 0 and json.loads(out)["correction"] == "Refunds take 5 business days."
    assert [f.correction for f in store.feedback(eid)] == ["Refunds take 5 business days."]
    code, out, _ = run(["episodes", "show", eid], capsys)
    assert code == 0 and "correction: Refunds take 5 business days." in out
    code, _, err = run(["feedback", eid, "--correction", "   "], capsys)
    assert code == 2 and "--correction must not be blank" in err
    assert len(store.feedback(eid)) == 1


# ---------------------------------------------------------------- empty lists, typos


def test_empty_lists_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["init"], capsys)[0] == 0
    ExperienceStore(settings=Settings()).start_episode("helpdesk")
    expected = {
        ("episodes", "list", "--agent", "nobody"): "no episodes match (no agent named 'nobody')\n",
        ("episodes", "list", "--agent", "helpdsk"): "no episodes match (no agent named 'helpdsk'; did you mean "
                                                     "'helpdesk'?)\n",
        ("adapters", "list"): "no adapters registered\n",
        ("adapters", "list", "--status", "live"): "no adapters match\n",
        ("stacks", "list"): "no stacks yet\n",
        ("stacks", "list", "--agent", "helpdesk"): "no stacks for agent 'helpdesk'\n",
        ("documents", "list"): "no documents stored\n",
        ("runs", "list"): "no consolidation runs yet\n",
        ("schedule", "list"): "no schedules\n",
        ("runs", "list", "--agent", "helpdsk"): "no runs for agent 'helpdsk' (no agent named 'helpdsk'; did you mean "
                                                 "'helpdesk'?)\n",
        ("deployments", "--agent", "helpdsk"): "no deployments for agent 'helpdsk' (no agent named 'helpdsk'; "
                                               "did you mean 'helpdesk'?)\n",
    }  # fmt: skip
    lists = {path for path in _commands() if path[-1] == "list" or path == ("deployments",)}
    assert lists == {("episodes", "list"), ("adapters", "list"), ("stacks", "list"), ("documents", "list"),
                     ("runs", "list"), ("schedule", "list"), ("deployments",)}  # fmt: skip
    for argv, line in expected.items():
        code, out, _ = run(list(argv), capsys)
        assert (code, out) == (0, line), argv
        code, out, _ = run([*argv, "--json"], capsys)
        assert (code, out) == (0, ""), argv  # JSON lines: an empty list is no lines
    fresh = Settings().data_dir.parent / "fresh"
    assert run(["init", "--data-dir", str(fresh)], capsys)[0] == 0
    assert run(["episodes", "list", "--data-dir", str(fresh)], capsys)[1] == "no episodes logged yet\n"


@pytest.mark.parametrize(("argv", "hint"), [
    (["epsiodes", "list"], "did you mean 'episodes'?"),
    (["episodes", "lst"], "did you mean 'list'?"),
    (["adapter", "list"], "did you mean 'adapters'?"),
    (["episodes", "list", "--status", "complted"], "did you mean 'completed'?"),
    (["feedback", "x", "--score", "1", "--source", "humn"], "did you mean 'human'?"),
])
def test_typos_get_a_suggestion(argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2 and hint in err and "invalid choice" in err


def test_unknown_names_get_a_suggestion_in_the_cli(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["deploy", "refnds@v1", "--agent", "helpdesk", "--no-validate"], capsys)
    assert code == 1 and "did you mean 'refunds'?" in err
    code, _, err = run(["adapters", "show", "tone@v7"], capsys)
    assert code == 1 and "tone@v7" in err
    assert run(["deploy", "refunds@v1", "--agent", "helpdesk", "--no-validate"], capsys)[0] == 0
    code, _, err = run(["rollback", "--agent", "helpdsk"], capsys)
    assert code == 1 and "did you mean 'helpdesk'?" in err


# ---------------------------------------------------------------- slow commands say so, on stderr


def test_slow_commands_show_a_status_line_on_stderr_only(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(common, "STATUS_DELAY_S", 0.0)  # as if every step took longer than the delay
    code, out, err = run(["deploy", "refunds@v1", "--agent", "helpdesk", "--max-delta-norm", "1000", "--json"], capsys)
    assert code == 0 and json.loads(out)["status"] == "deployed"
    assert "validating the stack against the base model ...\n" in err and re.search(r"\.\.\. done in \d+\.\d s", err)
    code, out, err = run(["deploy", "tone@v1", "--agent", "helpdesk", "--no-validate", "--json"], capsys)
    assert code == 0 and json.loads(out)["status"] == "deployed" and "validating" not in err
    code, out, err = run(["model", "pull", str(world["model"]), "--json"], capsys)
    assert code == 0 and json.loads(out)["path"] == str(world["model"]) and "pulling" in err and "done in" in err
    code, _, err = run(["deploy", "nothing@v1", "--agent", "helpdesk", "--json"], capsys)
    assert code == 1 and "... failed after" in err


def test_status_line_stays_quiet_for_quick_steps() -> None:
    import io

    stream = io.StringIO()
    with common.status_line("thinking", stream=stream, delay=5.0):
        pass
    assert stream.getvalue() == ""
    with common.status_line("thinking", stream=stream, delay=0.01):
        import time

        time.sleep(0.3)
    assert stream.getvalue().startswith("thinking ...\n... done in 0.")


# ---------------------------------------------------------------- the README


def test_readme_cli_table_lists_every_command() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("### CLI\n", 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith("agent-sleep ")]
    for path in _commands():
        first = [line for line in lines if re.search(rf"(^agent-sleep | / ){re.escape(path[0])}\b(?!-)", line)]
        assert first, f"README's CLI table has no line for agent-sleep {path[0]}"
        if len(path) > 1:
            assert any(re.search(rf"\b{re.escape(path[1])}\b", line) for line in first), \
                f"README's CLI table does not mention agent-sleep {' '.join(path)}"
