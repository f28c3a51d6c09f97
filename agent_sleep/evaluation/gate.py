"""The promotion gate: a candidate stack against the incumbent, item by item, suite by suite.

Both stacks are scored on the same items (:class:`~agent_sleep.interfaces.EvalResult` ``scores``),
so each suite gives per-item differences ``candidate - baseline``; their mean is the change, and a
seeded paired bootstrap (resampling items, :func:`paired_bootstrap`) gives its confidence interval.
Pairing removes the item-difficulty noise that dominates when two accuracies are compared as if
independent. What a suite must show depends on its role in the run (:data:`SuiteRole`):

* ``target`` (the skill being learned): a mean gain of at least ``min_target_gain`` and, with
  ``require_significant_gain``, a confidence interval entirely above 0;
* ``guard`` (general ability): a loss of at most ``max_guard_loss``;
* ``interference`` (skills already live): a loss of at most ``max_interference_loss``.

Losses are judged on the mean change (``loss_bound="mean"``) or, stricter, on the interval's lower
end (``"ci"``; with a few dozen items that end sits well below the mean, so it needs larger suites).
The gate fails closed: a suite missing on either side, scored on different items, or with no
items rejects the candidate, as does a run without a target suite. The decision lists every reason
and carries every suite's numbers (:class:`~agent_sleep.interfaces.SuiteComparison`).

Not here: producing the scores (:mod:`agent_sleep.evaluation.lm_eval`), deploying.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from agent_sleep.errors import InvalidInputError
from agent_sleep.interfaces import EvalResult, GateDecision, SuiteComparison, SuiteRole

__all__ = ["GatePolicy", "PairedGate", "paired_bootstrap"]

_ROLE_ORDER: tuple[str, ...] = get_args(SuiteRole)
_EPS = 1e-12  # float noise: a gain of exactly the threshold passes


class GatePolicy(BaseModel):
    """What a candidate must show to be admitted; see the module docstring. Scores are in [0, 1]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_target_gain: float = Field(default=0.05, ge=0.0, le=1.0)
    require_significant_gain: bool = True
    max_guard_loss: float = Field(default=0.02, ge=0.0, le=1.0)
    max_interference_loss: float = Field(default=0.05, ge=0.0, le=1.0)
    loss_bound: Literal["mean", "ci"] = "mean"
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    resamples: int = Field(default=2000, ge=100, le=1_000_000)
    seed: int = 0


def paired_bootstrap(candidate: Sequence[float], baseline: Sequence[float], *, resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """(mean difference, CI low, CI high): the percentile bootstrap of the mean of ``candidate[i] - baseline[i]``.

    Items are resampled with replacement ``resamples`` times by ``numpy.random.default_rng(seed)``;
    the same inputs and seed always give the same interval.
    """
    import numpy as np

    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if c.shape != b.shape or c.ndim != 1 or c.size == 0:
        raise InvalidInputError(f"paired scores must be two equal, non-empty lists; got {c.shape} and {b.shape}")
    if not (np.isfinite(c).all() and np.isfinite(b).all()):
        raise InvalidInputError("paired scores must be finite numbers")
    diff = c - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // diff.size)  # bounded memory for large suites
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


class PairedGate:
    """The reference :class:`~agent_sleep.interfaces.Gate`: ``roles`` names each suite's role in this run.

    Suites in the results but not in ``roles`` are ignored.
    """

    def __init__(self, roles: Mapping[str, SuiteRole], policy: GatePolicy | None = None) -> None:
        bad = {s: r for s, r in roles.items() if r not in _ROLE_ORDER}
        if bad:
            raise InvalidInputError(f"suite roles must be one of {', '.join(_ROLE_ORDER)}; got {bad}")
        self.roles = dict(roles)
        self.policy = policy or GatePolicy()

    def decide(self, candidate: Mapping[str, EvalResult], baseline: Mapping[str, EvalResult], /) -> GateDecision:
        failures: list[str] = []
        passes: list[str] = []
        comparisons: list[SuiteComparison] = []
        if "target" not in self.roles.values():
            failures.append("no target suite: nothing shows that the candidate helps")
        for suite in sorted(self.roles, key=lambda s: (_ROLE_ORDER.index(self.roles[s]), s)):
            role = self.roles[suite]
            problem = _unpaired(suite, role, candidate.get(suite), baseline.get(suite))
            if problem:
                failures.append(problem)
                continue
            comparison, reason = self._compare(suite, role, candidate[suite], baseline[suite])
            comparisons.append(comparison)
            (passes if comparison.passed else failures).append(reason)
        status: Literal["admitted", "rejected"] = "rejected" if failures else "admitted"
        return GateDecision(status=status, reasons=tuple(failures or passes), comparisons=tuple(comparisons))

    def _compare(self, suite: str, role: SuiteRole, cand: EvalResult, base: EvalResult) -> tuple[SuiteComparison, str]:
        p = self.policy
        ids = sorted(cand.scores)
        c = [float(cand.scores[i]) for i in ids]
        b = [float(base.scores[i]) for i in ids]
        seed = p.seed ^ zlib.crc32(suite.encode("utf-8"))  # independent, reproducible stream per suite
        delta, low, high = paired_bootstrap(c, b, resamples=p.resamples, confidence=p.confidence, seed=seed)
        numbers = (f"{role} {suite}: {sum(c) / len(c):.3f} vs {sum(b) / len(b):.3f}, change {delta:+.3f} "
                   f"({p.confidence:.0%} CI {low:+.3f}..{high:+.3f}, n={len(ids)})")  # fmt: skip
        if role == "target":
            why = []
            if delta < p.min_target_gain - _EPS:
                why.append(f"below the required gain {p.min_target_gain:+.3f}")
            if p.require_significant_gain and low <= 0.0:
                why.append("the interval reaches 0")
            passed = not why
        else:
            allowed = p.max_guard_loss if role == "guard" else p.max_interference_loss
            bound = delta if p.loss_bound == "mean" else low
            passed = bound >= -allowed - _EPS
            where = "the change" if p.loss_bound == "mean" else "the interval's low end"
            why = [] if passed else [f"{where} loses more than the allowed {allowed:.3f}"]
        reason = numbers + (": " + "; ".join(why) if why else "")
        comparison = SuiteComparison(suite=suite, role=role, n=len(ids), candidate=sum(c) / len(c),
                                     baseline=sum(b) / len(b), delta=delta, ci_low=low, ci_high=high,
                                     passed=passed)  # fmt: skip
        return comparison, reason


def _unpaired(suite: str, role: str, cand: EvalResult | None, base: EvalResult | None) -> str | None:
    """Why this suite cannot be compared item by item, or None."""
    missing = [side for side, r in (("candidate", cand), ("baseline", base)) if r is None]
    if missing:
        return f"{role} {suite}: not evaluated for the {' and the '.join(missing)}"
    assert cand is not None and base is not None
    if not cand.scores or not base.scores:
        return f"{role} {suite}: no per-item scores to pair"
    only_c, only_b = set(cand.scores) - set(base.scores), set(base.scores) - set(cand.scores)
    if only_c or only_b:
        return (f"{role} {suite}: candidate and baseline were scored on different items "
                f"({len(only_c)} only in the candidate's, {len(only_b)} only in the baseline's)")  # fmt: skip
    return None
