"""One check of an agent's live deployment: read the two samples, test each signal, decide. Writes nothing.

The samples, per signal (see :mod:`agent_sleep.guard` for the tests and why):

* **after**: the agent's episodes that started at or after the live deployment's time and before
  ``now``, oldest first, at most ``max_episodes``, cut to the newest *look* they reach
  (:func:`looks`: ``min_episodes``, doubling, ``max_episodes``; 30, 60, 100 by default). A check
  between two looks compares what the last look compared, so the verdict changes only at looks and
  however often a scheduler calls, a deployment gets at most ``len(looks)`` chances to be wrongly
  rolled back; :func:`decide` splits ``alpha`` among them;
* **before**: its episodes that started before the deployment while the previous deployment's stack
  was live (after the previous deployment's time; with no previous deployment, the base model's
  episodes), newest first, at most ``max_episodes``. With ``window: same_length``, only those that
  started at most as long before the deploy as the after sample's last episode started after it.

An episode's ``score`` is the mean of its feedback scores (episodes without a scored feedback are
not in the score sample); its ``success`` is whether its outcome is one of ``success_outcomes``
(episodes without an outcome are not in the success sample). Each side is read with one grouped
query per signal, newest or oldest first with a limit, so a check costs four small queries
whatever the history's size.

A live deployment that is itself a rollback is not judged (it returns to a stack that served
before; judging it against the stack it replaced would undo an undo): the verdict is ``keep``
and says so. An agent without deployments gets ``keep`` with no deployment named.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from agent_sleep.errors import NotFoundError
from agent_sleep.guard.config import OnlineGuardConfig
from agent_sleep.guard.stats import proportion_z_test, welch_t_test
from agent_sleep.names import did_you_mean
from agent_sleep.store.models import Episode, Feedback, utcnow
from agent_sleep.store.records import as_utc

if TYPE_CHECKING:
    from agent_sleep.registry import AdapterRegistry, DeploymentRecord
    from agent_sleep.store import ExperienceStore

__all__ = ["Decision", "GuardCheck", "SignalTest", "check_agent", "decide", "look_size", "looks", "registry_of"]

Decision = Literal["keep", "rollback", "insufficient_data"]
SignalOutcome = Literal["drop", "no_drop", "insufficient_data"]
TESTS = {"score": "welch_t", "success": "two_proportion_z"}


class SignalTest(BaseModel):
    """One signal compared across the deploy: the two samples' size and mean, the test and what it found.

    ``mean_*`` is the mean score for ``score``, the success rate for ``success``; ``drop`` is
    ``mean_before - mean_after`` (positive: worse after). ``alpha`` is the level this test was held
    to (the check's alpha shared among looks and signals tested). ``statistic`` is None when the test
    did not run, or when neither side varies (then the means decide).
    """

    model_config = ConfigDict(frozen=True)

    signal: Literal["score", "success"]
    test: Literal["welch_t", "two_proportion_z"]
    n_before: int
    mean_before: float | None
    n_after: int
    mean_after: float | None
    drop: float | None = None
    statistic: float | None = None
    df: float | None = None
    p_value: float | None = None
    alpha: float | None = None
    outcome: SignalOutcome
    note: str
    before_since: datetime | None = None  # where this signal's before window starts (None: no lower bound)


class GuardCheck(BaseModel):
    """The verdict of one check, as data: what was compared, the numbers, the decision and why."""

    model_config = ConfigDict(frozen=True)

    agent: str
    deployment_id: str | None
    deployment_seq: int | None
    stack: str | None  # the live (checked) stack
    previous_deployment_id: str | None = None
    previous_stack: str | None = None  # None: the base model served before (or nothing was deployed)
    deployed_at: datetime | None = None
    checked_at: datetime
    before_since: datetime | None = None  # the previous deployment's time (None: none); windows: per signal
    signals: tuple[SignalTest, ...] = ()
    decision: Decision
    reason: str
    config: OnlineGuardConfig

    def signal(self, name: str) -> SignalTest | None:
        return next((s for s in self.signals if s.signal == name), None)


# ---------------------------------------------------------------- deciding


def looks(config: OnlineGuardConfig) -> tuple[int, ...]:
    """The after-sample sizes at which a signal is tested: ``min_episodes``, doubling, then ``max_episodes``."""
    out, n = [], config.min_episodes
    while n < config.max_episodes:
        out.append(n)
        n *= 2
    return (*out, config.max_episodes)


def look_size(n_available: int, config: OnlineGuardConfig) -> int:
    """The after-sample size a check uses: the largest look not above ``n_available`` (0: none reached)."""
    return max((n for n in looks(config) if n <= n_available), default=0)


def _sample_note(signal: str, n_before: int, n_after: int, need: int) -> str:
    short = [f"{side} {n}" for side, n in (("before", n_before), ("after", n_after)) if n < need]
    return f"{signal}: too few episodes ({', '.join(short)}; need {need} a side)"


def _fmt(signal: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0%}" if signal == "success" else f"{v:.3f}"


def _describe(t: SignalTest) -> str:
    stat = "no spread" if t.statistic is None else f"{'t' if t.test == 'welch_t' else 'z'} {t.statistic:.2f}"
    return (f"{t.signal} {_fmt(t.signal, t.mean_before)} -> {_fmt(t.signal, t.mean_after)} "
            f"(n {t.n_before} vs {t.n_after}, {stat}, p {t.p_value:.2g} vs alpha {t.alpha:.3g})")


def decide(before: dict[str, list[float]], after: dict[str, list[float]],
           config: OnlineGuardConfig) -> tuple[tuple[SignalTest, ...], Decision, str]:
    """Test each configured signal on the two samples; the decision and its reason.

    ``before[signal]``: the previous stack's values, newest first; ``after[signal]``: the new
    stack's, oldest first (``score``: per-episode mean scores, ``success``: 0/1). Each side is cut
    to ``max_episodes`` and the after side to its look (:func:`look_size`): a signal is tested once
    its after sample has reached ``min_episodes`` and the before sample holds that many too. Every
    test is held to ``alpha / (looks x signals tested)`` (Bonferroni over both), so a stack that is
    no worse is rolled back with probability at most ``alpha`` however often it is checked. A signal
    drops when its one-sided p-value is at most that level *and* the drop is at least ``min_drop``.
    Any drop: ``rollback``; no signal tested: ``insufficient_data``; else ``keep``.
    """
    cut_before = {s: list(before.get(s, ()))[: config.max_episodes] for s in config.signals}
    cut_after = {s: list(after.get(s, ()))[: look_size(len(after.get(s, ())), config)] for s in config.signals}
    testable = [s for s in config.signals if cut_after[s] and len(cut_before[s]) >= config.min_episodes]
    level = config.alpha / (len(looks(config)) * len(testable)) if testable else None
    tests: list[SignalTest] = []
    for signal in config.signals:
        b, a = cut_before[signal], cut_after[signal] or list(after.get(signal, ()))
        mb = sum(b) / len(b) if b else None
        ma = sum(a) / len(a) if a else None
        base = {"signal": signal, "test": TESTS[signal], "n_before": len(b), "mean_before": mb, "n_after": len(a),
                "mean_after": ma, "drop": None if mb is None or ma is None else mb - ma}
        if signal not in testable:
            tests.append(SignalTest(**base, outcome="insufficient_data",
                                    note=_sample_note(signal, len(b), len(a), config.min_episodes)))
            continue
        assert level is not None and mb is not None and ma is not None
        if signal == "score":
            result = welch_t_test(b, a)
        else:
            result = proportion_z_test(round(sum(b)), len(b), round(sum(a)), len(a))
        drop = mb - ma
        significant = result.p_value <= level
        if significant and drop >= config.min_drop:
            outcome: SignalOutcome = "drop"
            note = (f"{signal} dropped by {drop:.3g} (at least {config.min_drop:g}), "
                    f"p {result.p_value:.2g} <= {level:.3g}")
        elif significant:
            outcome = "no_drop"
            note = f"{signal} dropped by {drop:.3g}: significant, but less than min_drop {config.min_drop:g}"
        else:
            outcome = "no_drop"
            note = f"{signal}: no significant drop (p {result.p_value:.2g} > {level:.3g})"
        tests.append(SignalTest(**base, statistic=result.statistic, df=result.df, p_value=result.p_value,
                                alpha=level, outcome=outcome, note=note))
    drops = [t for t in tests if t.outcome == "drop"]
    if drops:
        return tuple(tests), "rollback", "significant drop: " + "; ".join(_describe(t) for t in drops)
    if not testable:
        return tuple(tests), "insufficient_data", "; ".join(t.note for t in tests)
    kept = "no significant drop: " + "; ".join(_describe(t) for t in tests if t.outcome != "insufficient_data")
    untested = [t.note for t in tests if t.outcome == "insufficient_data"]
    return tuple(tests), "keep", kept + ("; not tested: " + "; ".join(untested) if untested else "")


# ---------------------------------------------------------------- reading the samples


def registry_of(source: ExperienceStore | AdapterRegistry) -> AdapterRegistry:
    """The registry over ``source`` (a store, or a registry as it is)."""
    from agent_sleep.registry import AdapterRegistry

    return source if isinstance(source, AdapterRegistry) else AdapterRegistry(source)


def _values(store: ExperienceStore, agent: str, signal: str, config: OnlineGuardConfig, since: datetime | None,
            until: datetime, *, newest: bool) -> list[tuple[datetime, float]]:
    """(started_at, value) of ``agent``'s episodes with ``signal`` that started in ``[since, until)``: the
    newest or oldest ``max_episodes``, in that order. One grouped query."""
    started = Episode.started_at
    if signal == "score":
        stmt = (select(started, func.avg(Feedback.score))
                .join(Feedback, Feedback.episode_id == Episode.id)
                .where(Episode.agent == agent, Feedback.score.is_not(None), started < until)
                .group_by(Episode.id, started))  # fmt: skip
    else:
        stmt = select(started, Episode.outcome).where(Episode.agent == agent, Episode.outcome.is_not(None),
                                                      started < until)
    if since is not None:
        stmt = stmt.where(started >= since)
    stmt = stmt.order_by(started.desc() if newest else started, Episode.id).limit(config.max_episodes)
    labels = config.success_outcomes
    with store.session() as s:
        rows = s.execute(stmt).all()
    if signal == "score":
        return [(_utc(at), float(v)) for at, v in rows]
    return [(_utc(at), 1.0 if v in labels else 0.0) for at, v in rows]


def _utc(value: datetime) -> datetime:
    out = as_utc(value)
    assert out is not None
    return out


def _samples(store: ExperienceStore, agent: str, config: OnlineGuardConfig, deployed_at: datetime,
             previous_at: datetime | None, checked_at: datetime
             ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, datetime | None]]:
    """(before, after, the start of each signal's before window) for :func:`decide`.

    ``same_length``: the before window reaches as far before the deploy as the after sample (at its
    look) reaches after it, so a check at the same look always compares the same episodes.
    """
    before: dict[str, list[float]] = {}
    after: dict[str, list[float]] = {}
    since: dict[str, datetime | None] = {}
    for signal in config.signals:
        rows = _values(store, agent, signal, config, deployed_at, checked_at, newest=False)
        rows = rows[: look_size(len(rows), config) or len(rows)]
        after[signal] = [v for _, v in rows]
        lower = previous_at
        if config.window == "same_length":
            span = (rows[-1][0] - deployed_at) if rows else timedelta(0)
            start = deployed_at - span
            lower = start if lower is None else max(lower, start)
        since[signal] = lower
        before[signal] = [v for _, v in _values(store, agent, signal, config, lower, deployed_at, newest=True)]
    return before, after, since


def check_agent(source: ExperienceStore | AdapterRegistry, agent: str, config: OnlineGuardConfig | None = None, *,
                now: datetime | None = None) -> GuardCheck:
    """Judge ``agent``'s live deployment against the stack before it (``now``: the end of the after window,
    default the current time). Reads only; :func:`agent_sleep.guard.enforce` acts on the verdict."""
    config = config or OnlineGuardConfig()
    registry = registry_of(source)
    store = registry.store
    checked_at = as_utc(now) or utcnow()
    live = registry.live(agent)
    if live is None:
        known = store.agents()
        if agent not in known:
            raise NotFoundError(f"no agent named {agent!r}{did_you_mean(agent, known)}")
        return GuardCheck(agent=agent, deployment_id=None, deployment_seq=None, stack=None, checked_at=checked_at,
                          decision="keep", reason=f"agent {agent!r} has no deployment: nothing to guard",
                          config=config)
    if live.kind == "rollback":  # its previous_id is where the next rollback goes, not what it replaced
        previous = next((d for d in registry.deployments(agent) if d.seq == live.seq - 1), None)
    else:
        previous = registry.deployment(live.previous_id) if live.previous_id else None
    head = _head(live, previous, checked_at, config)
    if live.kind == "rollback":
        return GuardCheck(**head, decision="keep", reason=(
            f"deployment #{live.seq} is a rollback (by {live.actor}) to a stack that served before; "
            f"the guard judges deploys only"))
    deployed_at = as_utc(live.created_at)
    assert deployed_at is not None
    if checked_at <= deployed_at:
        return GuardCheck(**head, decision="insufficient_data",
                          reason=f"the check's time {checked_at.isoformat()} is not after the deploy")
    previous_at = as_utc(previous.created_at) if previous is not None else None
    before, after, since = _samples(store, agent, config, deployed_at, previous_at, checked_at)
    signals, decision, reason = decide(before, after, config)
    signals = tuple(t.model_copy(update={"before_since": since.get(t.signal)}) for t in signals)
    return GuardCheck(**head, signals=signals, decision=decision, reason=reason)


def _head(live: DeploymentRecord, previous: DeploymentRecord | None, checked_at: datetime,
          config: OnlineGuardConfig) -> dict[str, Any]:
    """The fields of a check that name what is compared: the deployment and the one before it."""
    return {"agent": live.agent, "deployment_id": live.id, "deployment_seq": live.seq, "stack": live.stack.name,
            "previous_deployment_id": previous.id if previous else None,
            "previous_stack": previous.stack.name if previous else None, "deployed_at": as_utc(live.created_at),
            "checked_at": checked_at, "before_since": as_utc(previous.created_at) if previous else None,
            "config": config}
