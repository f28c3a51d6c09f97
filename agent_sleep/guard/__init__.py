"""The online guard: after a deployment, compare how the agent does on the new stack with the stack
before it, and roll back automatically on a statistically significant drop.

The gate (:mod:`agent_sleep.evaluation`) judges a candidate on held-out probes before it goes
live; the guard judges it afterwards, on live traffic: feedback scores and outcomes of the
episodes that ran on it. It is off by default (``OnlineGuardConfig(enabled=True)`` turns the
rollbacks on; disabled, checks are still made and journaled, so its verdicts can be watched first).

**The test.** Two samples: the episodes that started after the live deployment (the new stack)
and those that started before it while the previous stack was live (:mod:`.check` says which,
and the ``window`` and ``max_episodes`` settings). Two signals, each optional:

* ``score``: the per-episode mean feedback score, compared with a **one-sided Welch t test**
  (H1: mean after < mean before; unequal variances and sizes allowed);
* ``success``: the rate of episodes whose outcome is a success label among episodes with an
  outcome, compared with a **one-sided pooled two-proportion z test**.

A signal is tested only with at least ``min_episodes`` episodes on both sides; the signals tested
share ``alpha`` (Bonferroni: each at ``alpha / k``), so one check rolls back a stack that is no
worse with probability at most ``alpha``. A signal counts as a drop when its p-value is at most its
share of alpha **and** the drop in mean (or rate) is at least ``min_drop``. Any drop: ``rollback``;
no signal with enough data: ``insufficient_data`` (data, not an error); otherwise ``keep``.

Repeated checks of the same deployment while its sample grows are repeated looks, each with
chance ``alpha``; the sample stops growing at ``max_episodes`` a side (after the deploy, the oldest
``max_episodes`` are used), so from then on every check gives the same verdict.
``evals/bench_online_guard.py`` measures the false-rollback rate of single checks and of a
scheduler checking every 10 episodes, and the power (numbers in the README).

**Recording.** A rollback is a deployment (kind ``rollback``, actor ``online-guard``) whose reason
states the numbers and whose ``detail`` holds the whole :class:`GuardCheck`; every check is also
appended to ``<data_dir>/guard/<agent>.jsonl`` (:mod:`.journal` says why a file). A rollback
happens only while the checked deployment is still live (:mod:`.enforce`).

Entry points: :func:`check_agent` (a verdict, writes nothing), :func:`enforce` (check, journal,
roll back if enabled; for the scheduler), ``agent-sleep guard check|history``.
"""

from agent_sleep.guard.check import GuardCheck, SignalTest, check_agent, decide
from agent_sleep.guard.config import OnlineGuardConfig, load_guard_config
from agent_sleep.guard.enforce import DETAIL_KEY, GUARD_ACTOR, GuardOutcome, enforce, roll_back
from agent_sleep.guard.journal import journal_path, read_journal

__all__ = [
    "DETAIL_KEY", "GUARD_ACTOR", "GuardCheck", "GuardOutcome", "OnlineGuardConfig", "SignalTest", "check_agent",
    "decide", "enforce", "journal_path", "load_guard_config", "read_journal", "roll_back",
]  # fmt: skip
