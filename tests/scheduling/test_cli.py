"""``agent-sleep schedule``, ``sleep --enqueue``, ``runs list`` (owner column) and the scheduler's config file,
through the real entry point (the SQLite default in the test's data dir)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.cli.main import main
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.errors import ConfigError
from agent_sleep.scheduling.config import load_scheduler_config
from agent_sleep.scheduling.requests import RequestStore
from agent_sleep.scheduling.service import SchedulerService
from agent_sleep.scheduling.worker import Worker
from agent_sleep.store import ExperienceStore
from tests.scheduling.conftest import AGENT
from tests.scheduling.fake_cycle import fake_cycle


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path) -> Any:
    store = ExperienceStore()  # the test's AGENT_SLEEP_DATA_DIR
    eid = store.start_episode(AGENT)
    store.end_episode(eid)
    yield store
    store.close()


def test_schedules_are_added_listed_and_removed(data: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("budget_seconds: 600\n")
    code, out, _ = run(["schedule", "add", "--agent", AGENT, "--cron", "0 3 * * *", "--config", str(cycle)], capsys)
    assert code == 0
    cron_id = out.strip()
    assert run(["schedule", "add", "--agent", AGENT, "--after-episodes", "50"], capsys)[0] == 0
    code, out, _ = run(["schedule", "list"], capsys)
    assert cron_id in out and "cron '0 3 * * *' (UTC)" in out and "after 50 new episodes" in out
    assert str(cycle.resolve()) in out
    code, out, _ = run(["schedule", "list", "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["kind"] for r in rows} == {"cron", "new_episodes"}
    code, _, err = run(["schedule", "add", "--agent", AGENT, "--cron", "0 3 * *"], capsys)
    assert code == 1 and "five-field" in err
    code, _, err = run(["schedule", "add", "--agent", AGENT, "--every", "60", "--on-documents"], capsys)
    assert code == 2 and "not allowed with argument" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget_seconds: -1\n")
    code, _, err = run(["schedule", "add", "--agent", AGENT, "--every", "60", "--config", str(bad)], capsys)
    assert code == 1 and "budget_seconds" in err  # refused now, not when it fires
    code, out, _ = run(["schedule", "remove", cron_id[:8]], capsys)
    assert code == 0 and f"removed schedule {cron_id}" in out
    assert cron_id not in run(["schedule", "list"], capsys)[1]
    other = next(r["id"] for r in rows if r["kind"] == "new_episodes")
    code, out, _ = run(["schedule", "remove", other, "--json"], capsys)
    assert code == 0 and json.loads(out) | {"id": other, "removed": True} == json.loads(out)
    assert run(["schedule", "list"], capsys)[1] == "no schedules\n"


def test_sleep_enqueue_writes_a_pending_request_that_a_worker_serves(data: Any, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("budget_seconds: 600\n")
    code, out, _ = run(["sleep", "--agent", AGENT, "--enqueue", "--config", str(cycle)], capsys)
    assert code == 0
    req = RequestStore(data).get(out.strip())
    assert (req.status, req.source, req.detail) == ("pending", "manual", {"config": str(cycle.resolve())})
    assert RunStore(data).runs() == []  # nothing ran here
    code, _, err = run(["sleep", "--agent", "helpdsk", "--enqueue"], capsys)
    assert code == 1 and "did you mean 'helpdesk'" in err
    served = Worker(data, lease_seconds=5, cycle=fake_cycle).serve(AGENT)
    assert served.action == "ran" and f"config {cycle.resolve()}" in served.line
    code, out, _ = run(["runs", "list"], capsys)
    assert "OWNER" in out and f":{os.getpid()}" in out  # the host:pid that ran it
    code, out, _ = run(["runs", "list", "--json"], capsys)
    assert json.loads(out.splitlines()[0])["owner"].split(":")[1] == str(os.getpid())


def test_a_scheduler_config_lists_every_problem_at_once(tmp_path: Path) -> None:
    (tmp_path / "bad-cycle.yaml").write_text("budget_seconds: -1\n")
    path = tmp_path / "scheduler.yaml"
    path.write_text("""\
poll_seconds: 0
lease_secs: 60
agents:
  helpdesk:
    config: bad-cycle.yaml
    schedules:
      - cron: "0 3 * *"
      - every: 60
        after_episodes: 5
      - {}
""")
    with pytest.raises(ConfigError) as err:
        load_scheduler_config(path)
    text = str(err.value)
    for part in ("poll_seconds: Input should be greater than 0", "lease_secs: Extra inputs are not permitted",
                 "agents.helpdesk.schedules.0", "five-field", "agents.helpdesk.schedules.1: give exactly one of",
                 "agents.helpdesk.schedules.2", "agents.helpdesk.config", "budget_seconds"):  # fmt: skip
        assert part in text, (part, text)


def test_a_config_files_schedules_land_in_the_table_once(data: Any, tmp_path: Path) -> None:
    (tmp_path / "cycle.yaml").write_text("budget_seconds: 600\n")
    path = tmp_path / "scheduler.yaml"
    path.write_text("agents:\n  helpdesk:\n    config: cycle.yaml\n    schedules:\n"
                    "      - cron: '0 3 * * *'\n      - on_documents: true\n")  # fmt: skip
    config = load_scheduler_config(path, workers=3)
    assert config.workers == 3 and config.agents[AGENT].config == tmp_path / "cycle.yaml"
    lines: list[str] = []
    for _ in range(2):  # two schedulers loading the same file
        service = SchedulerService(data, config, cycle=fake_cycle, say=lines.append)
        service.start()
        service.timers.stop()
    from agent_sleep.scheduling.schedules import ScheduleStore

    rows = ScheduleStore(data).list()
    assert sorted(r.kind for r in rows) == ["cron", "documents"]
    assert {r.config_path for r in rows} == {str(tmp_path / "cycle.yaml")}
    assert sum("added from the config" in line for line in lines) == 2
