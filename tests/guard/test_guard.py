"""The online guard end to end over SQLite and PostgreSQL: a drop rolls back with its numbers, no drop keeps,
too little data decides nothing, off by default, and a rollback never overrides a newer deploy."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from agent_sleep.errors import DeployConflictError, DeploymentError, NotFoundError
from agent_sleep.guard import (
    DETAIL_KEY,
    GUARD_ACTOR,
    GuardCheck,
    OnlineGuardConfig,
    check_agent,
    enforce,
    journal_path,
    read_journal,
    roll_back,
)
from agent_sleep.registry import AdapterRegistry
from agent_sleep.registry.records import Rejection
from agent_sleep.store import ExperienceStore
from tests.guard.helpers import AGENT, NOW, T0, T1, deploy_at, history, log_episodes, register

ON = OnlineGuardConfig(enabled=True)


@pytest.fixture
def registry(store: ExperienceStore) -> AdapterRegistry:
    return AdapterRegistry(store)


def _journal(registry: AdapterRegistry) -> list[dict]:
    records, skipped = read_journal(journal_path(registry.store.settings.data_dir, AGENT))
    assert skipped == 0
    return records


def test_a_clear_drop_rolls_back_with_the_numbers_recorded(registry: AdapterRegistry, tmp_path: Path) -> None:
    d1, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), n_after=70)
    outcome = enforce(registry, AGENT, ON, now=NOW)

    check = outcome.check
    assert outcome.action == "rolled_back" and check.decision == "rollback"
    assert (check.deployment_id, check.stack, check.previous_stack) == (d2.id, d2.stack.name, d1.stack.name)
    score, success = check.signal("score"), check.signal("success")
    assert score is not None and success is not None
    assert (score.n_before, score.n_after, success.n_before, success.n_after) == (50, 60, 50, 60)  # look 60
    assert score.mean_before > 0.7 and score.mean_after < 0.5 and score.outcome == "drop"
    assert score.p_value is not None and score.p_value < 1e-6 and score.statistic is not None and score.statistic < -5
    assert score.alpha == pytest.approx(0.05 / 6)  # three looks (30, 60, 100) x two signals share alpha 0.05
    assert success.outcome == "drop" and success.test == "two_proportion_z"

    rb = outcome.rollback
    assert rb is not None and registry.live(AGENT) == rb
    assert (rb.kind, rb.actor, rb.seq, rb.stack.id) == ("rollback", GUARD_ACTOR, 3, d1.stack.id)
    assert rb.reason.startswith("online guard: significant drop: score ")
    assert f"{score.mean_before:.3f} -> {score.mean_after:.3f}" in rb.reason and "n 50 vs 60" in rb.reason
    assert rb.detail is not None
    assert GuardCheck.model_validate(rb.detail[DETAIL_KEY]) == check  # the whole check, as stored
    assert registry.deployment(rb.id).detail == rb.detail
    assert registry.get(d2.stack.items[0].adapter).status == "rolled_back"

    [entry] = _journal(registry)
    assert entry["action"] == "rolled_back" and entry["rollback_id"] == rb.id
    assert GuardCheck.model_validate(entry["check"]) == check

    again = enforce(registry, AGENT, ON, now=NOW)  # the live deployment is now the guard's rollback
    assert again.action == "none" and again.check.decision == "keep" and "is a rollback" in again.check.reason
    assert registry.live(AGENT) == rb


def test_no_drop_keeps(registry: AdapterRegistry, tmp_path: Path) -> None:
    _, d2 = history(registry, tmp_path, before=(0.6, 0.6), after=(0.7, 0.75))
    outcome = enforce(registry, AGENT, ON, now=NOW)
    assert outcome.action == "none" and outcome.rollback is None
    assert outcome.check.decision == "keep" and outcome.check.reason.startswith("no significant drop: score ")
    assert all(t.outcome == "no_drop" and t.p_value is not None and t.p_value > 0.5 for t in outcome.check.signals)
    assert registry.live(AGENT).id == d2.id  # type: ignore[union-attr]
    assert [e["check"]["decision"] for e in _journal(registry)] == ["keep"]
    enforce(registry, AGENT, ON, now=NOW + timedelta(hours=1))  # the same verdict on the same numbers ...
    assert len(_journal(registry)) == 1  # ... is not journaled again
    log_episodes(registry.store, T1 + timedelta(hours=5), [0.7] * 50, ["resolved"] * 50)  # 100: the last look
    assert enforce(registry, AGENT, ON, now=NOW).check.signals[0].n_after == 100
    assert [e["check"]["signals"][0]["n_after"] for e in _journal(registry)] == [30, 100]


def test_a_small_drop_keeps_however_significant(registry: AdapterRegistry, tmp_path: Path) -> None:
    history(registry, tmp_path, before=(0.75, 0.8), after=(0.65, 0.7), n_before=100, n_after=100)
    config = OnlineGuardConfig(enabled=True, min_drop=0.2, max_episodes=100)
    check = check_agent(registry, AGENT, config, now=NOW)
    score = check.signal("score")
    assert score is not None and score.p_value is not None and score.p_value < 0.025  # significant ...
    assert check.decision == "keep" and "less than min_drop 0.2" in score.note  # ... but too small to matter


def test_too_little_data_is_insufficient_data_and_no_rollback(registry: AdapterRegistry, tmp_path: Path) -> None:
    _, d2 = history(registry, tmp_path, before=(0.9, 0.9), after=(0.1, 0.1), n_before=50, n_after=10)
    outcome = enforce(registry, AGENT, ON, now=NOW)
    assert outcome.action == "none" and outcome.check.decision == "insufficient_data"
    assert "too few episodes (after 10; need 30 a side)" in outcome.check.reason
    assert [(t.n_before, t.n_after, t.p_value) for t in outcome.check.signals] == [(50, 10, None), (50, 10, None)]
    assert registry.live(AGENT).id == d2.id  # type: ignore[union-attr]
    assert _journal(registry)[0]["check"]["decision"] == "insufficient_data"


def test_one_signal_short_of_data_is_reported_and_the_other_decides(registry: AdapterRegistry,
                                                                     tmp_path: Path) -> None:
    names = register(registry, tmp_path)
    deploy_at(registry, names[0], T0)
    log_episodes(registry.store, T0 + timedelta(hours=1), [0.8] * 20 + [0.7] * 20)  # scores, no outcomes
    deploy_at(registry, names[1], T1)
    log_episodes(registry.store, T1 + timedelta(hours=1), [0.3] * 20 + [0.4] * 20)
    check = check_agent(registry, AGENT, ON, now=NOW)
    assert check.decision == "rollback"
    success = check.signal("success")
    assert success is not None and success.outcome == "insufficient_data" and success.n_before == 0
    assert check.signal("score").alpha == pytest.approx(0.05 / 3)  # type: ignore[union-attr]  # the only one tested


def test_the_guard_is_off_by_default(registry: AdapterRegistry, tmp_path: Path) -> None:
    assert OnlineGuardConfig().enabled is False
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4))
    outcome = enforce(registry, AGENT, now=NOW)  # no config: the defaults
    assert outcome.check.decision == "rollback" and outcome.action == "disabled" and outcome.rollback is None
    assert registry.live(AGENT).id == d2.id  # type: ignore[union-attr]
    assert [e["action"] for e in _journal(registry)] == ["disabled"]  # shadow mode: recorded, not acted on

    dry = enforce(registry, AGENT, ON, now=NOW, dry_run=True)
    assert dry.action == "dry_run" and dry.journal is None
    assert registry.live(AGENT).id == d2.id  # type: ignore[union-attr]
    assert len(_journal(registry)) == 1


def test_the_first_deployment_rolls_back_to_the_base_model(registry: AdapterRegistry, tmp_path: Path) -> None:
    names = register(registry, tmp_path, 1)
    log_episodes(registry.store, T0 + timedelta(hours=1), [0.8] * 40, ["resolved"] * 40)  # the base model served
    d1 = deploy_at(registry, names[0], T1)
    log_episodes(registry.store, T1 + timedelta(hours=1), [0.2] * 40, ["escalated"] * 40)
    outcome = enforce(registry, AGENT, ON, now=NOW)
    assert outcome.check.previous_stack is None and outcome.check.before_since is None
    score = outcome.check.signal("score")
    assert score is not None and score.statistic is None and score.p_value == 0.0  # no spread: the means decide
    rb = outcome.rollback
    assert rb is not None and rb.kind == "rollback" and rb.stack.items == () and rb.previous_id is None
    assert registry.get(d1.stack.items[0].adapter).status == "rolled_back"


def test_the_before_sample_is_the_previous_stacks_only(registry: AdapterRegistry, tmp_path: Path) -> None:
    names = register(registry, tmp_path)
    log_episodes(registry.store, T0 - timedelta(days=1), [0.0] * 40)  # before v1: not v1's traffic
    deploy_at(registry, names[0], T0)
    log_episodes(registry.store, T0 + timedelta(hours=1), [0.5, 0.6] * 35)
    deploy_at(registry, names[1], T1)
    log_episodes(registry.store, T1 + timedelta(hours=1), [0.5, 0.6] * 35)
    log_episodes(registry.store, NOW + timedelta(hours=1), [0.0] * 40)  # after the check's time
    check = check_agent(registry, AGENT, ON, now=NOW)
    score = check.signal("score")
    assert score is not None and (score.n_before, score.n_after) == (70, 60)  # after: its oldest 60 (a look)
    assert score.mean_before == pytest.approx(0.55) and score.mean_after == pytest.approx(0.55)
    assert check.decision == "keep" and check.before_since == T0 and score.before_since == T0


def test_same_length_window_and_the_sample_cap(registry: AdapterRegistry, tmp_path: Path) -> None:
    names = register(registry, tmp_path)
    deploy_at(registry, names[0], T0)
    log_episodes(registry.store, T0 + timedelta(hours=1), [0.2] * 40)  # early in v1's day
    log_episodes(registry.store, T1 - timedelta(minutes=120), [0.8] * 40)  # T1-120 .. T1-81 min
    deploy_at(registry, names[1], T1)
    log_episodes(registry.store, T1, [0.8] * 30, step=timedelta(minutes=4))  # T1 .. T1+116 min
    same = check_agent(registry, AGENT, OnlineGuardConfig(window="same_length", signals=("score",)), now=NOW)
    score = same.signal("score")
    assert score is not None and score.before_since == T1 - timedelta(minutes=116)
    assert (score.n_before, score.mean_before) == (36, pytest.approx(0.8))  # T1-116 .. T1-81 min only
    capped = check_agent(registry, AGENT, OnlineGuardConfig(max_episodes=40, signals=("score",)), now=NOW)
    score = capped.signal("score")
    assert score is not None and (score.n_before, score.n_after) == (40, 30)
    assert score.mean_before == pytest.approx(0.8) and score.before_since == T0  # the newest 40 before
    assert capped.decision == "keep"


def test_checks_between_looks_compare_the_same_episodes(registry: AdapterRegistry, tmp_path: Path) -> None:
    history(registry, tmp_path, before=(0.7, 0.7), after=(0.6, 0.6), n_after=45)
    first = check_agent(registry, AGENT, ON, now=NOW)
    log_episodes(registry.store, T1 + timedelta(hours=3), [0.0] * 10, ["escalated"] * 10)  # 55 now: no new look
    second = check_agent(registry, AGENT, ON, now=NOW)
    assert [t.n_after for t in first.signals] == [30, 30] and second.signals == first.signals
    log_episodes(registry.store, T1 + timedelta(hours=4), [0.0] * 5, ["escalated"] * 5)  # 60: the second look
    third = check_agent(registry, AGENT, ON, now=NOW)
    assert [t.n_after for t in third.signals] == [60, 60] and third.decision == "rollback"


def test_a_check_of_an_agent_without_deployments(registry: AdapterRegistry, tmp_path: Path) -> None:
    log_episodes(registry.store, T0, [0.5])
    check = check_agent(registry, AGENT, ON, now=NOW)
    assert check.decision == "keep" and check.deployment_id is None and "no deployment" in check.reason
    with pytest.raises(NotFoundError, match="no agent named 'helpdsk'; did you mean 'helpdesk'"):
        check_agent(registry, "helpdsk", ON)


def test_a_rollback_the_registry_refuses_is_journaled_and_raised(registry: AdapterRegistry, tmp_path: Path) -> None:
    d1, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4))
    registry.reject(d1.stack.items[0].adapter, "leaks a secret", Rejection(check="manual", kind="manual"))
    with pytest.raises(DeploymentError, match="holds rejected versions, nothing was deployed"):
        enforce(registry, AGENT, ON, now=NOW)
    assert registry.live(AGENT).id == d2.id  # type: ignore[union-attr]
    [entry] = _journal(registry)
    assert entry["action"] == "failed" and "leaks a secret" in entry["error"]


# ---------------------------------------------------------------- races with a manual deploy


def test_a_manual_deploy_after_the_check_wins(registry: AdapterRegistry, tmp_path: Path) -> None:
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4))
    check = check_agent(registry, AGENT, ON, now=NOW)
    assert check.decision == "rollback"
    manual = registry.deploy(AGENT, "refunds@v3", actor="alice", expected_seq=d2.seq)
    with pytest.raises(DeployConflictError, match=r"deployment #2 of agent 'helpdesk' is no longer live \(now: #3 "
                                                  r"\(deploy by alice\)\); its check is void and nothing was rolled"):
        roll_back(registry, check)
    assert registry.live(AGENT) == manual and len(registry.deployments(AGENT)) == 3


def test_enforce_records_a_lost_race_and_raises(registry: AdapterRegistry, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4))
    real_rollback = registry.rollback

    def deploy_first(*args: object, **kwargs: object) -> object:  # a manual deploy lands between check and write
        registry.deploy(AGENT, "refunds@v3", actor="alice")
        return real_rollback(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "rollback", deploy_first)
    with pytest.raises(DeployConflictError, match="was replaced while rolling back; nothing was rolled back"):
        enforce(registry, AGENT, ON, now=NOW)
    assert registry.live(AGENT).actor == "alice"  # type: ignore[union-attr]
    [entry] = _journal(registry)
    assert entry["action"] == "conflict" and "nothing was rolled back" in entry["error"]


@pytest.mark.parametrize("round_", range(3))
def test_racing_the_guard_and_a_manual_deploy_one_wins(registry: AdapterRegistry, tmp_path: Path,
                                                        round_: int) -> None:
    _, d2 = history(registry, tmp_path, before=(0.75, 0.8), after=(0.45, 0.4), seed=round_)
    check = check_agent(registry, AGENT, ON, now=NOW)
    assert check.decision == "rollback"
    barrier = threading.Barrier(2)
    won: list[str] = []
    lost: dict[str, DeployConflictError] = {}

    def guard() -> None:
        barrier.wait()
        try:
            roll_back(registry, check)
            won.append("guard")
        except DeployConflictError as exc:
            lost["guard"] = exc

    def manual() -> None:
        barrier.wait()
        try:  # what `agent-sleep deploy` does: deploy on top of the deployment it saw
            registry.deploy(AGENT, "refunds@v3", actor="alice", expected_seq=d2.seq)
            won.append("manual")
        except DeployConflictError as exc:
            lost["manual"] = exc

    threads = [threading.Thread(target=guard), threading.Thread(target=manual)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and set(won) | set(lost) == {"guard", "manual"}, (won, lost)
    assert "nothing was" in str(next(iter(lost.values())))
    deps = registry.deployments(AGENT)
    assert [d.seq for d in deps] == [1, 2, 3]
    assert deps[-1].actor == (GUARD_ACTOR if won == ["guard"] else "alice")
