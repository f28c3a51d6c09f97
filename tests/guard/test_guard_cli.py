"""``agent-sleep guard check|history`` and guard rollbacks in ``agent-sleep deployments``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent_sleep.cli.main import main
from agent_sleep.config import Settings
from agent_sleep.registry import AdapterRegistry
from agent_sleep.store import ExperienceStore
from tests.guard.helpers import AGENT, history


@pytest.fixture
def base(tmp_path: Path, db_url: str) -> list[str]:
    """CLI options of a data dir where v2 replaced v1 and scores and success dropped on it."""
    data = tmp_path / "data"
    store = ExperienceStore(settings=Settings(data_dir=data, database_url=db_url))
    history(AdapterRegistry(store), tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=60)
    store.close()
    return ["--data-dir", str(data), "--db", db_url]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_and_rolls_back_only_when_enabled(base: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([*base, "guard", "check", "--agent", AGENT], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("helpdesk #2 helpdesk:stack@v2 (was helpdesk:stack@v1): rollback: significant drop:")
    assert re.fullmatch(r"  score    0\.7\d\d -> 0\.4\d\d  n 50/60  t -\d+\.\d\d  p \S+  alpha 0\.00833  drop",
                        lines[1])
    assert re.fullmatch(r"  success  \d\d% -> \d\d%  n 50/60  z -\d\.\d\d  p \S+  alpha 0\.00833  drop", lines[2])
    assert lines[-1].strip().startswith("the guard is disabled: nothing rolled back")

    code, out, _ = _run([*base, "guard", "check", "--agent", AGENT, "--dry-run", "--json"], capsys)
    dry = json.loads(out)
    assert code == 0 and dry["action"] == "dry_run" and dry["journal"] is None
    assert dry["check"]["decision"] == "rollback" and dry["check"]["signals"][0]["n_after"] == 60

    config = tmp_path / "guard.yaml"
    config.write_text("enabled: true\n")
    code, out, _ = _run([*base, "guard", "check", "--agent", AGENT, "--config", str(config)], capsys)
    assert code == 0 and "  rolled back: rollback #3 makes helpdesk:stack@v1 live again (id=" in out

    code, out, _ = _run([*base, "deployments", "--agent", AGENT], capsys)
    rows = out.splitlines()
    assert rows[2].startswith("#3") and "rollback" in rows[2]
    assert "by online-guard: online guard: significant drop" in rows[2]
    assert rows[3].strip().startswith("online guard checked #2 helpdesk:stack@v2 at ")
    assert rows[3].strip().endswith("against helpdesk:stack@v1")
    assert rows[4] == "     " + lines[1].strip() and rows[5] == "     " + lines[2].strip()  # the same numbers
    code, out, _ = _run([*base, "deployments", "--agent", AGENT, "--json"], capsys)
    last = json.loads(out.splitlines()[-1])
    assert last["actor"] == "online-guard" and last["detail"]["online_guard"]["decision"] == "rollback"

    code, out, _ = _run([*base, "guard", "history", "--agent", AGENT], capsys)
    rows = out.splitlines()
    assert code == 0 and len(rows) == 2  # the disabled check and the rollback; the dry run wrote nothing
    assert "rollback          disabled" in rows[0] and "rollback          rolled_back" in rows[1]
    code, out, _ = _run([*base, "guard", "history", "--agent", AGENT, "--json", "--limit", "1"], capsys)
    [entry] = [json.loads(line) for line in out.splitlines()]
    assert entry["action"] == "rolled_back" and entry["check"]["deployment_seq"] == 2

    code, out, _ = _run([*base, "guard", "check", "--agent", AGENT, "--config", str(config)], capsys)
    assert code == 0 and out.startswith("helpdesk #3 helpdesk:stack@v1 (was helpdesk:stack@v2): keep: deployment "
                                        "#3 is a rollback")


def test_check_errors(base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run([*base, "guard", "check", "--agent", "helpdsk"], capsys)
    assert code == 1 and "no agent named 'helpdsk'; did you mean 'helpdesk'?" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("enabled: yes please\nalpha: 2\n")
    code, _, err = _run([*base, "guard", "check", "--agent", AGENT, "--config", str(bad)], capsys)
    assert code == 1 and "enabled: Input should be a valid boolean" in err and "alpha: Input should be less" in err
    code, out, _ = _run([*base, "guard", "history", "--agent", "sales"], capsys)
    assert code == 0 and out.startswith("no guard checks recorded for agent 'sales'")
