"""The paired gate: bootstrap interval math, and admit/reject on target gain, guard loss and interference."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from agent_sleep.errors import InvalidInputError
from agent_sleep.evaluation.gate import GatePolicy, PairedGate, paired_bootstrap
from agent_sleep.interfaces import EvalResult, Gate, GateDecision
from tests.helpers_protocols import protocol_mismatches


def _result(suite: str, right: list[int], *, stack: tuple[tuple[str, float], ...] = ()) -> EvalResult:
    scores = {f"{suite}-{i:03d}": float(s) for i, s in enumerate(right)}
    return EvalResult(suite=suite, stack=stack, metrics={"accuracy": sum(right) / len(right)}, samples=len(right),
                      seconds=1.0, scores=scores)  # fmt: skip


def _flip(right: list[int], *, up: int = 0, down: int = 0) -> list[int]:
    """``right`` with the first ``up`` wrong items made right and the first ``down`` right items made wrong."""
    out = list(right)
    for i in [i for i, s in enumerate(out) if s == 0][:up]:
        out[i] = 1
    for i in [i for i, s in enumerate(out) if s == 1][:down]:
        out[i] = 0
    return out


# ---------------------------------------------------------------- bootstrap math


def test_identical_differences_give_a_zero_width_interval() -> None:
    assert paired_bootstrap([1, 1, 1, 0], [0, 0, 0, -1]) == (1.0, 1.0, 1.0)
    assert paired_bootstrap([0.5] * 7, [0.5] * 7) == (0.0, 0.0, 0.0)


def test_two_items_give_the_exact_resampling_distribution() -> None:
    # Differences (1, 0): a resampled mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 2.5 % and
    # 97.5 % quantiles are 0 and 1 (each end holds far more than 2.5 % of the 2,000 resamples).
    delta, low, high = paired_bootstrap([1, 0], [0, 0], resamples=2000, seed=0)
    assert (delta, low, high) == (0.5, 0.0, 1.0)


def test_the_interval_matches_the_normal_approximation_for_many_items() -> None:
    # 400 items, 100 improved (+1), 40 worse (-1), the rest equal: mean 0.15, sd of a difference
    # sqrt(0.35 - 0.15^2) = 0.5723, standard error 0.02862, normal 95 % interval 0.15 +- 0.0561.
    cand = [1] * 100 + [0] * 40 + [1] * 130 + [0] * 130
    base = [0] * 100 + [1] * 40 + [1] * 130 + [0] * 130
    delta, low, high = paired_bootstrap(cand, base, resamples=4000, seed=1)
    half = 1.96 * math.sqrt(0.35 - 0.15**2) / math.sqrt(400)
    assert delta == pytest.approx(0.15)
    assert low == pytest.approx(0.15 - half, abs=0.006) and high == pytest.approx(0.15 + half, abs=0.006)
    assert paired_bootstrap(cand, base, resamples=4000, seed=1) == (delta, low, high)  # seeded: reproducible


def test_bootstrap_refuses_unpaired_input() -> None:
    for cand, base in (([1, 0], [1]), ([], []), ([float("nan")], [0.0])):
        with pytest.raises(InvalidInputError):
            paired_bootstrap(cand, base)


# ---------------------------------------------------------------- decisions

BASE_TARGET = [0] * 30 + [1] * 10  # 40 items, 25 % right
BASE_GUARD = [1] * 95 + [0] * 5  # 100 items, 95 % right
ROLES = {"skill": "target", "guards": "guard", "old_skill": "interference"}


def _decide(target: list[int], guard: list[int], old: list[int], policy: GatePolicy | None = None) -> GateDecision:
    base = {"skill": _result("skill", BASE_TARGET), "guards": _result("guards", BASE_GUARD),
            "old_skill": _result("old_skill", BASE_GUARD)}  # fmt: skip
    cand = {"skill": _result("skill", target), "guards": _result("guards", guard),
            "old_skill": _result("old_skill", old)}  # fmt: skip
    return PairedGate(ROLES, policy).decide(cand, base)


def test_the_gate_is_a_gate() -> None:
    assert isinstance(PairedGate(ROLES), Gate) and protocol_mismatches(PairedGate(ROLES), Gate) == []


def test_a_clear_gain_without_losses_is_admitted_with_the_numbers() -> None:
    decision = _decide(_flip(BASE_TARGET, up=12), _flip(BASE_GUARD, down=1), BASE_GUARD)
    assert decision.admitted, decision.reasons
    by_suite = {c.suite: c for c in decision.comparisons}
    assert [c.suite for c in decision.comparisons] == ["skill", "guards", "old_skill"]  # target, guard, interference
    skill = by_suite["skill"]
    assert (skill.role, skill.n, skill.baseline, skill.candidate) == ("target", 40, 0.25, 0.55)
    assert skill.delta == pytest.approx(0.30) and 0 < skill.ci_low < 0.30 < skill.ci_high
    assert by_suite["guards"].delta == pytest.approx(-0.01) and by_suite["guards"].passed
    assert len(decision.reasons) == 3 and decision.reasons[0].startswith("target skill: 0.550 vs 0.250, change +0.300")


def test_too_small_or_uncertain_a_gain_is_rejected() -> None:
    small = _decide(_flip(BASE_TARGET, up=1), BASE_GUARD, BASE_GUARD)  # +0.025
    assert small.status == "rejected"
    assert small.reasons == (small.reasons[0],) and "below the required gain +0.050" in small.reasons[0]
    # +0.05 on the mean, but 4 up and 2 down: the interval reaches 0.
    noisy = _decide(_flip(_flip(BASE_TARGET, up=4), down=2), BASE_GUARD, BASE_GUARD)
    assert not noisy.admitted and "the interval reaches 0" in noisy.reasons[0] and "below" not in noisy.reasons[0]
    lenient = GatePolicy(require_significant_gain=False)
    assert _decide(_flip(_flip(BASE_TARGET, up=4), down=2), BASE_GUARD, BASE_GUARD, lenient).admitted


def test_a_guard_loss_rejects_a_helpful_candidate_and_every_reason_is_listed() -> None:
    decision = _decide(_flip(BASE_TARGET, up=12), _flip(BASE_GUARD, down=3), _flip(BASE_GUARD, down=10))
    assert decision.status == "rejected"
    assert len(decision.reasons) == 2  # the guard and the interference probe, not only the first
    assert decision.reasons[0].startswith("guard guards: 0.920 vs 0.950, change -0.030")
    assert "loses more than the allowed 0.020" in decision.reasons[0]
    assert decision.reasons[1].startswith("interference old_skill:") and "allowed 0.050" in decision.reasons[1]
    assert [c.passed for c in decision.comparisons] == [True, False, False]


def test_interference_has_its_own_allowance_and_ci_mode_is_stricter() -> None:
    assert _decide(_flip(BASE_TARGET, up=12), BASE_GUARD, _flip(BASE_GUARD, down=4)).admitted  # -0.04 <= 0.05
    strict = GatePolicy(loss_bound="ci")
    decision = _decide(_flip(BASE_TARGET, up=12), _flip(BASE_GUARD, down=1), BASE_GUARD, strict)
    assert not decision.admitted and "the interval's low end loses more" in decision.reasons[0]


def test_the_gate_fails_closed_on_missing_or_unpaired_results() -> None:
    gate = PairedGate(ROLES)
    good = {"skill": _result("skill", _flip(BASE_TARGET, up=12)), "guards": _result("guards", BASE_GUARD),
            "old_skill": _result("old_skill", BASE_GUARD)}  # fmt: skip
    base = {"skill": _result("skill", BASE_TARGET), "guards": _result("guards", BASE_GUARD),
            "old_skill": _result("old_skill", BASE_GUARD)}  # fmt: skip
    assert gate.decide(good, base).admitted

    missing = gate.decide({k: v for k, v in good.items() if k != "guards"}, base)
    assert missing.reasons == ("guard guards: not evaluated for the candidate",)

    shorter = dict(good, guards=_result("guards", BASE_GUARD[:90]))
    reason = gate.decide(shorter, base).reasons[0]
    assert "scored on different items (0 only in the candidate's, 10 only in the baseline's)" in reason

    bare = EvalResult(suite="skill", stack=(), metrics={"accuracy": 1.0}, samples=40, seconds=1)
    no_scores = dict(good, skill=bare)
    assert gate.decide(no_scores, base).reasons == ("target skill: no per-item scores to pair",)

    without_target = PairedGate({"guards": "guard"}).decide(good, base)
    assert without_target.reasons == ("no target suite: nothing shows that the candidate helps",)
    assert PairedGate({"skill": "target"}).decide(good, base).admitted  # suites without a role are ignored


def test_policy_and_roles_are_validated() -> None:
    with pytest.raises(ValidationError):
        GatePolicy(min_target_gian=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        GatePolicy(max_guard_loss=-0.1)
    with pytest.raises(InvalidInputError, match="suite roles must be one of target, guard, interference"):
        PairedGate({"x": "main"})  # type: ignore[dict-item]
    assert GatePolicy().model_dump() == {
        "min_target_gain": 0.05, "require_significant_gain": True, "max_guard_loss": 0.02,
        "max_interference_loss": 0.05, "loss_bound": "mean", "confidence": 0.95, "resamples": 2000,
        "seed": 0}  # fmt: skip
