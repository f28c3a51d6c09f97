"""The guard's statistics: the tests against table values (and scipy where it happens to be installed), the
decision rule, and its error rates on synthetic traffic (false rollbacks near alpha, power for a real drop)."""

from __future__ import annotations

import random

import pytest

from agent_sleep.errors import ConfigError
from agent_sleep.guard import OnlineGuardConfig, decide, load_guard_config
from agent_sleep.guard.check import look_size, looks
from agent_sleep.guard.stats import normal_cdf, proportion_z_test, student_t_cdf, welch_t_test


@pytest.mark.parametrize(("t", "df", "cdf"), [
    (-2.015048, 5, 0.05), (-1.812461, 10, 0.05), (-2.763769, 28, 0.005), (-1.644854, 1e7, 0.05),
    (-12.7062, 1, 0.025), (0.0, 3.3, 0.5), (2.527977, 20, 0.99), (-4.0, 60, 8.8161e-5),
])  # fmt: skip
def test_student_t_matches_the_tables(t: float, df: float, cdf: float) -> None:
    assert student_t_cdf(t, df) == pytest.approx(cdf, rel=2e-3)


def test_normal_cdf() -> None:
    assert normal_cdf(-1.959964) == pytest.approx(0.025, rel=1e-5) and normal_cdf(0) == 0.5


def test_welch_by_hand() -> None:
    before, after = [0.8, 0.9, 0.7, 0.85, 0.75], [0.5, 0.6, 0.55, 0.7]
    r = welch_t_test(before, after)
    # means 0.8 / 0.5875, variances 0.00625 / 0.0072917: t = -0.2125 / sqrt(0.00125 + 0.0018229) = -3.834,
    # df = 0.0030729^2 / (0.00125^2 / 4 + 0.0018229^2 / 3) = 6.30
    assert r.statistic == pytest.approx(-3.8335, abs=1e-3)
    assert r.df == pytest.approx(6.302, abs=1e-3) and r.p_value == pytest.approx(0.003926, rel=1e-3)
    assert welch_t_test(after, before).p_value == pytest.approx(1 - r.p_value)
    assert welch_t_test([1.0, 1.0], [0.0, 0.0]).p_value == 0.0  # no spread: the means decide
    assert welch_t_test([0.5, 0.5], [0.5, 0.5]).p_value == 1.0


def test_two_proportions_by_hand() -> None:
    r = proportion_z_test(40, 50, 28, 50)  # 80% -> 56%: pooled 0.68, se 0.0933
    assert r.statistic == pytest.approx(-2.572, abs=1e-3) and r.p_value == pytest.approx(0.00505, rel=0.01)
    assert proportion_z_test(50, 50, 50, 50).p_value == 1.0


def test_against_scipy_where_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(100):
        before = [rng.random() for _ in range(rng.randint(2, 120))]
        after = [rng.random() ** 2 for _ in range(rng.randint(2, 120))]
        ours, theirs = welch_t_test(before, after), stats.ttest_ind(after, before, equal_var=False, alternative="less")
        assert ours.p_value == pytest.approx(theirs.pvalue, abs=1e-12)
    for t in (-30.0, -3.0, -0.5, 0.7, 5.0):
        for df in (1.0, 2.5, 9.0, 77.7, 1e4):
            assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-10)  # lgamma at df 1e4: ~1e-12


def test_looks() -> None:
    assert looks(OnlineGuardConfig()) == (30, 60, 100)
    assert looks(OnlineGuardConfig(min_episodes=50, max_episodes=50)) == (50,)
    assert looks(OnlineGuardConfig(min_episodes=20, max_episodes=200)) == (20, 40, 80, 160, 200)
    assert [look_size(n, OnlineGuardConfig()) for n in (0, 29, 30, 59, 60, 99, 100, 500)] == [0, 0, 30, 30, 60, 60,
                                                                                            100, 100]


# ---------------------------------------------------------------- error rates on synthetic traffic


def _clipped(rng: random.Random, n: int, mean: float, sd: float = 0.25) -> list[float]:
    return [min(1.0, max(0.0, rng.gauss(mean, sd))) for _ in range(n)]


def _thumbs(rng: random.Random, n: int, rate: float) -> list[float]:
    return [1.0 if rng.random() < rate else 0.0 for _ in range(n)]


def _rate(config: OnlineGuardConfig, *, score: tuple[float, float], success: tuple[float, float], n: int,
          seeds: int, checks: list[int] | None = None, score_of=_clipped) -> float:  # type: ignore[no-untyped-def]
    """Share of trials rolled back (at any of ``checks``: after-sample sizes a scheduler checks at)."""
    hits = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        before = {"score": score_of(rng, n, score[0]), "success": _thumbs(rng, n, success[0])}
        after = {"score": score_of(rng, n, score[1]), "success": _thumbs(rng, n, success[1])}
        for k in checks or [n]:
            if decide(before, {s: v[:k] for s, v in after.items()}, config)[1] == "rollback":
                hits += 1
                break
    return hits / seeds


def test_noise_rolls_back_about_alpha_of_the_time() -> None:
    """Same traffic both sides: one fixed-sample check (one look) rolls back near alpha; 2000 seeds (sd ~0.005)."""
    fixed = OnlineGuardConfig(min_episodes=50, max_episodes=50)
    for score_of in (_clipped, _thumbs):
        rate = _rate(fixed, score=(0.6, 0.6), success=(0.7, 0.7), n=50, seeds=2000, score_of=score_of)
        assert 0.03 <= rate <= 0.07, (score_of.__name__, rate)


def test_a_scheduler_checking_often_stays_under_alpha() -> None:
    """The defaults checked after every 10 new episodes from 30 to 100 (8 checks, 3 looks): at most ~alpha."""
    rate = _rate(OnlineGuardConfig(), score=(0.6, 0.6), success=(0.7, 0.7), n=100, seeds=600,
                 checks=list(range(30, 101, 10)))
    assert rate <= 0.065, rate  # measured 0.035-0.040 over 4000 seeds (evals/bench_online_guard.py)


def test_a_drop_of_0_2_is_caught_at_50_episodes_a_side() -> None:
    fixed = OnlineGuardConfig(min_episodes=50, max_episodes=50)
    power = _rate(fixed, score=(0.7, 0.5), success=(0.7, 0.7), n=50, seeds=400)
    assert power >= 0.9, power  # measured 0.975 (sd 0.25 scores, success unchanged)


def test_the_decision_rule() -> None:
    config = OnlineGuardConfig(min_episodes=5, max_episodes=5)
    before = {"score": [0.9, 0.8, 0.85, 0.95, 0.9, 0.1], "success": [1.0] * 5}  # newest first: the 0.1 is cut
    tests, decision, reason = decide(before, {"score": [0.2, 0.3, 0.25, 0.1, 0.2], "success": [1.0] * 5}, config)
    assert decision == "rollback" and reason.startswith("significant drop: score 0.880 -> 0.210 (n 5 vs 5, t ")
    assert tests[0].alpha == pytest.approx(0.025) and tests[1].p_value == 1.0 and tests[1].outcome == "no_drop"
    _, decision, reason = decide(before, {"score": [0.9] * 3, "success": [1.0] * 3}, config)
    assert decision == "insufficient_data" and reason == ("score: too few episodes (after 3; need 5 a side); "
                                                          "success: too few episodes (after 3; need 5 a side)")


# ---------------------------------------------------------------- config


def test_config_defaults_and_every_problem_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = OnlineGuardConfig()
    assert (c.enabled, c.signals, c.alpha, c.min_episodes, c.max_episodes, c.window) == (
        False, ("score", "success"), 0.05, 30, 100, "episodes")
    assert load_guard_config() == c
    path = tmp_path / "guard.yaml"
    path.write_text("enabled: true\nalpha: 0.7\nsignals: [score, succes]\nmin_episode: 3\nwindow: days\n")
    with pytest.raises(ConfigError) as exc:
        load_guard_config(path)
    text = str(exc.value)
    assert text.startswith(f"{path} is not a valid online guard config:")
    for needle in ("alpha: Input should be less than 0.5", "signals.1: Input should be 'score' or 'success'",
                   "min_episode: Extra inputs are not permitted", "window: Input should be 'episodes' or"):
        assert needle in text, text
    path.write_text("min_episodes: 50\nmax_episodes: 40\n")
    with pytest.raises(ConfigError, match=r"max_episodes \(40\) must be at least min_episodes \(50\)"):
        load_guard_config(path)
    path.write_text("schedule: nightly\nonline_guard:\n  enabled: true\n  signals: [score]\n")
    assert load_guard_config(path) == OnlineGuardConfig(enabled=True, signals=("score",))
    assert load_guard_config(path, alpha=0.01).alpha == 0.01
    path.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_guard_config(path)
    with pytest.raises(ConfigError, match="cannot read online guard config"):
        load_guard_config(tmp_path / "missing.yaml")
