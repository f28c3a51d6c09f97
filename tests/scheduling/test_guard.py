"""The online guard run by the scheduler: a clearly worse live stack is rolled back (a deployment by
online-guard) under the agent's lease; disabled, the verdict is only journaled; a lease held by a running
cycle defers the check to the next poll; the config's online_guard section, inline or a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.errors import ConfigError
from agent_sleep.guard import DETAIL_KEY, GUARD_ACTOR, OnlineGuardConfig, journal_path, read_journal
from agent_sleep.registry import AdapterRegistry
from agent_sleep.scheduling.config import AgentEntry, SchedulerConfig, load_scheduler_config
from agent_sleep.scheduling.leases import Acquired, LeaseStore
from agent_sleep.scheduling.service import SchedulerService
from tests.guard.helpers import AGENT, history
from tests.scheduling.fake_cycle import fake_cycle


def _service(store: Any, guard: OnlineGuardConfig | None, lines: list[str], **config: Any) -> SchedulerService:
    agents = {AGENT: AgentEntry(online_guard=guard)}
    return SchedulerService(store, SchedulerConfig(agents=agents, **config), cycle=fake_cycle, say=lines.append)


def test_the_scheduler_rolls_a_clearly_worse_stack_back_under_the_lease(store: Any, tmp_path: Path) -> None:
    registry = AdapterRegistry(store)
    d1, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=70)
    lines: list[str] = []
    assert _service(store, OnlineGuardConfig(enabled=True), lines).run(once=True) == 0

    live = registry.live(AGENT)
    assert live is not None and (live.kind, live.actor, live.seq) == ("rollback", GUARD_ACTOR, 3)
    assert live.stack.id == d1.stack.id and live.detail[DETAIL_KEY]["deployment_id"] == d2.id
    (line,) = [ln for ln in lines if "guard helpdesk:" in ln]
    assert f"rolled back deployment #2 ({d2.stack.name}) to {d1.stack.name} as deployment #3" in line
    assert "significant drop" in line and "score 0.7" in line and "-> 0.4" in line  # the numbers
    assert any("online guard every 300 s: helpdesk (rolls back)" in ln for ln in lines)
    lease = LeaseStore(store).get(AGENT)
    assert lease.token == 1 and lease.owner is None  # taken for the check, then released
    (entry,) = read_journal(journal_path(store.settings.data_dir, AGENT))[0]
    assert entry["action"] == "rolled_back" and entry["rollback_id"] == live.id


def test_disabled_the_verdict_is_journaled_and_nothing_is_rolled_back(store: Any, tmp_path: Path) -> None:
    registry = AdapterRegistry(store)
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=70)
    lines: list[str] = []
    service = _service(store, OnlineGuardConfig(), lines, guard_every_seconds=0.001)
    service.start()
    try:
        for _ in range(3):  # checked at every poll (due again each time): one journal line, one log line
            service.poll()
            time.sleep(0.01)
    finally:
        service.timers.stop()
    assert [g.action for g in service.guarded] == ["disabled"] * 3
    assert registry.live(AGENT) == d2 and len(registry.deployments(AGENT)) == 2
    (line,) = [ln for ln in lines if "guard helpdesk:" in ln]
    assert "would roll back deployment #2" in line and "enabled is false (journaled only)" in line
    records, _ = read_journal(journal_path(store.settings.data_dir, AGENT))
    assert [r["action"] for r in records] == ["disabled"] and records[0]["check"]["decision"] == "rollback"


def test_a_cycle_holding_the_lease_defers_the_check_to_the_next_poll(store: Any, tmp_path: Path) -> None:
    registry = AdapterRegistry(store)
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=70)
    leases = LeaseStore(store, seconds=30)
    cycle = leases.acquire(AGENT, "otherhost:77:cycle")  # another worker's cycle of the agent
    assert isinstance(cycle, Acquired)
    lines: list[str] = []
    service = _service(store, OnlineGuardConfig(enabled=True), lines)
    service.start()
    try:
        service.poll()
        service.poll()
        assert [g.action for g in service.guarded] == ["held", "held"]
        assert registry.live(AGENT) == d2  # nothing rolled back while the cycle runs
        assert sum("not checked while its cycle runs: lease held by otherhost:77:cycle" in ln for ln in lines) == 1
        leases.release(cycle)
        service.poll()  # the next poll after the cycle: checked at once, not guard_every_seconds later
        service.poll()  # then not again until guard_every_seconds have passed
    finally:
        service.timers.stop()
    assert [g.action for g in service.guarded] == ["held", "held", "rolled_back"]
    live = registry.live(AGENT)
    assert live is not None and live.actor == GUARD_ACTOR and live.seq == 3


def test_insufficient_data_and_keep_are_lines_not_deployments(store: Any, tmp_path: Path) -> None:
    registry = AdapterRegistry(store)
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.74, 0.8), n_after=10)
    lines: list[str] = []
    service = _service(store, OnlineGuardConfig(enabled=True), lines)
    service.run(once=True)
    (line,) = [ln for ln in lines if "guard helpdesk:" in ln]
    assert service.guarded[0].action == "insufficient_data" and "insufficient data on deployment #2" in line
    assert "too few episodes" in line and registry.live(AGENT) == d2

    lines.clear()
    _service(store, OnlineGuardConfig(enabled=True, min_episodes=5, max_episodes=10), lines).run(once=True)
    (line,) = [ln for ln in lines if "guard helpdesk:" in ln]
    assert "keep deployment #2" in line and "no significant drop" in line and registry.live(AGENT) == d2


def test_agents_without_an_online_guard_section_are_not_checked(store: Any, tmp_path: Path) -> None:
    registry = AdapterRegistry(store)
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=70)
    lines: list[str] = []
    service = _service(store, None, lines)
    service.run(once=True)
    assert service.guarded == [] and not any("guard" in ln for ln in lines) and registry.live(AGENT) == d2
    assert not journal_path(store.settings.data_dir, AGENT).exists()


def test_the_online_guard_section_inline_or_a_file_and_every_problem_at_once(tmp_path: Path) -> None:
    (tmp_path / "guard.yaml").write_text("online_guard:\n  enabled: true\n  min_episodes: 10\n")
    path = tmp_path / "scheduler.yaml"
    path.write_text("guard_every_seconds: 60\nagents:\n  helpdesk:\n    online_guard: {enabled: true, alpha: 0.01}\n"
                    "  ops:\n    online_guard: guard.yaml\n  quiet:\n    online_guard: {}\n  plain: {}\n")  # fmt: skip
    config = load_scheduler_config(path)
    assert config.guard_every_seconds == 60
    assert config.agents["helpdesk"].online_guard == OnlineGuardConfig(enabled=True, alpha=0.01)
    assert config.agents["ops"].online_guard == OnlineGuardConfig(enabled=True, min_episodes=10)
    assert config.agents["quiet"].online_guard == OnlineGuardConfig()  # checked, journal only
    assert config.agents["plain"].online_guard is None and SchedulerConfig().guard_every_seconds == 300

    path.write_text("guard_every_seconds: 0\nagents:\n  helpdesk:\n    online_guard: {alpha: 0.9, enable: true}\n"
                    "  ops:\n    online_guard: missing.yaml\n")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_scheduler_config(path)
    text = str(err.value)
    for part in ("guard_every_seconds: Input should be greater than 0", "agents.helpdesk.online_guard.alpha",
                 "agents.helpdesk.online_guard.enable: Extra inputs", "agents.ops.online_guard: cannot read",
                 "missing.yaml"):  # fmt: skip
        assert part in text, (part, text)


def test_agent_sleep_scheduler_once_runs_the_guard_of_its_config(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from agent_sleep.cli.main import main
    from agent_sleep.store import ExperienceStore

    store = ExperienceStore()  # the test's AGENT_SLEEP_DATA_DIR, as the command finds it
    try:
        registry = AdapterRegistry(store)
        d1, _ = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=70)
        path = tmp_path / "scheduler.yaml"
        path.write_text("agents:\n  helpdesk:\n    online_guard: {enabled: true}\n")
        assert main(["scheduler", "--config", str(path), "--once", "--guard-every-seconds", "60"]) == 0
        err = capsys.readouterr().err
        assert "online guard every 60 s: helpdesk (rolls back)" in err
        assert "guard helpdesk: rolled back deployment #2" in err
        live = registry.live(AGENT)
        assert live is not None and live.actor == GUARD_ACTOR and live.stack.id == d1.stack.id
    finally:
        store.close()
