"""``agent-sleep sleep`` and ``runs list|show|explain`` through the real entry point, on the tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.cli.main import main
from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore
from tests.consolidation.conftest import AGENT, FACTS
from tests.consolidation.planner import simple_planner

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
CONFIG = """\
generators:
  sft: {settings: {max_steps: 60, lr: 0.02, batch_size: 4, converged_loss: 0.05}}
evaluation: {guard_limit: 3, max_new_tokens: 8}
gate: {resamples: 200}
max_delta_norm: 1000   # random tiny weights: a trained LoRA is large next to them
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A data dir on the tiny model, the test planner as the default one, and a cycle config file."""
    monkeypatch.setenv("AGENT_SLEEP_MODEL", str(tiny_model))
    monkeypatch.setattr("agent_sleep.consolidation.cycle.default_planner", lambda: simple_planner)
    config = tmp_path / "cycle.yaml"
    config.write_text(CONFIG)
    return {"config": str(config), "store": ExperienceStore(settings=Settings())}


def _log(store: Any, answer: str, *, score: float = 1.0, n: int = 1) -> list[str]:
    question, right = FACTS["capitals"]
    ids = []
    for _ in range(n):
        eid = store.start_episode(AGENT, metadata={"skill": "capitals", "answer": right})
        store.append_events(eid, [{"kind": "user_message", "content": question},
                                  {"kind": "assistant_message", "content": answer}])  # fmt: skip
        store.end_episode(eid)
        store.add_feedback(eid, score=score)
        ids.append(eid)
    return ids


def test_sleep_promotes_and_runs_explain_why(cli: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    store = cli["store"]
    _log(store, "Paris.", n=6)
    (low,) = _log(store, "Lyon?", score=0.0)
    code, out, err = run(["sleep", "--agent", AGENT, "--config", cli["config"], "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["outcome"] == "promoted" and result["deployed_stack"] == f"{AGENT}:stack@v1"
    (skill,) = result["skills"]
    assert (skill["generator"], skill["generator_version"], skill["status"]) == ("sft", "1", "admitted")
    target = next(c for c in skill["comparisons"] if c["role"] == "target")
    assert {"baseline", "candidate", "delta", "ci_low", "ci_high", "n"} <= set(target)
    assert set(result["stages"]) == {"select", "generate", "evaluate", "deploy"}
    assert all(ISO_UTC.fullmatch(result[k]) for k in ("started_at", "ended_at"))
    assert "select: done in" in err and "evaluate: capitals@v1 admitted" in err and err.count("\n") >= 8
    run_id = result["run_id"]

    code, out, _ = run(["runs", "list"], capsys)
    assert code == 0 and run_id in out and "promoted" in out and f"{AGENT}:stack@v1" in out
    code, out, _ = run(["runs", "list", "--agent", AGENT, "--json"], capsys)
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert listed["id"] == run_id and listed["outcome"] == "promoted" and ISO_UTC.fullmatch(listed["started_at"])

    code, out, _ = run(["runs", "show", run_id[:8]], capsys)
    assert code == 0 and "capitals@v1" in out and "admitted" in out and "evaluate  done" in out
    code, out, _ = run(["runs", "show", run_id, "--json"], capsys)
    shown = json.loads(out)
    assert shown["run"]["summary"]["outcome"] == "promoted" and ISO_UTC.fullmatch(shown["run"]["summary"]["ended_at"])
    assert [s["stage"] for s in shown["stages"]] == ["select", "generate", "evaluate", "deploy"]

    code, out, _ = run(["runs", "explain", run_id], capsys)
    assert code == 0 and len(out.splitlines()) == 7
    assert f"episode {low}: not used, dropped by score: mean feedback score 0.0 is below 0.5" in out
    code, out, _ = run(["runs", "explain", run_id, low], capsys)
    assert "not marked consolidated" in out and "score            dropped" in out
    code, out, _ = run(["runs", "explain", run_id, "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    probe = next(r for r in rows if any(d["role"] == "probe" for d in r["decisions"]))
    assert probe["used"] and probe["why"].startswith("held-out probe for skill 'capitals'")
    code, out, _ = run(["runs", "explain", run_id, probe["item_id"]], capsys)
    assert f"marked consolidated by run {run_id}" in out
    code, _, err = run(["runs", "explain", run_id, "0" * 32], capsys)
    assert code == 1 and "made no decision about" in err

    # Nothing new: exit 0, no signal.
    code, out, _ = run(["sleep", "--agent", AGENT, "--config", cli["config"]], capsys)
    assert code == 0 and "no_signal" in out


def test_sleep_exit_codes(cli: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    store = cli["store"]
    code, out, _ = run(["runs", "list"], capsys)
    assert (code, out) == (0, "no consolidation runs yet\n")
    _log(store, "hello world.", n=6)  # teaches the wrong answer: the gate says no
    code, out, err = run(["sleep", "--agent", AGENT, "--config", cli["config"]], capsys)
    assert code == 3, err
    assert "rejected_by_gate" in out and "capitals@v1" in out and "rejected" in out
    code, out, _ = run(["runs", "list", "--agent", "helpdsk"], capsys)
    assert out == "no runs for agent 'helpdsk' (no agent named 'helpdsk'; did you mean 'helpdesk'?)\n"

    code, _, err = run(["sleep", "--agent", "helpdsk", "--config", cli["config"]], capsys)
    assert code == 1 and "no agent named 'helpdsk'; did you mean 'helpdesk'?" in err
    assert ExperienceStore(settings=Settings()).agents() == [AGENT]  # the typo started nothing
    code, _, err = run(["sleep", "--config", cli["config"]], capsys)
    assert code == 2 and "--agent" in err
    bad = Path(cli["config"]).with_name("bad.yaml")
    bad.write_text("gate: {min_target_gain: 3}\nbudget: 10\n")
    code, _, err = run(["sleep", "--agent", AGENT, "--config", str(bad)], capsys)
    assert code == 1 and "gate.min_target_gain" in err and "budget: Extra inputs" in err
    code, _, err = run(["runs", "show", "nope"], capsys)
    assert code == 1 and "no consolidation run 'nope'" in err
