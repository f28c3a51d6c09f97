"""A deployment history with live traffic on both sides, for the online guard's tests.

Deployments are made through the registry and then dated into the past (``deploy_at``), and
episodes, outcomes and feedback are written as capture ops with their own timestamps, so a test
lays out "stack v1 served 50 episodes, then v2 was deployed and served 50 more" without waiting.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from agent_sleep.registry import AdapterRegistry, DeploymentRecord
from agent_sleep.store import ExperienceStore
from agent_sleep.store.models import Deployment, new_id, utcnow
from tests.helpers_adapters import write_random

AGENT = "helpdesk"
T0 = utcnow().replace(microsecond=0) - timedelta(days=30)  # v1 deployed
T1 = T0 + timedelta(days=1)  # v2 deployed
NOW = T0 + timedelta(days=2)  # the check


def register(registry: AdapterRegistry, tmp_path: Path, n: int = 3) -> list[str]:
    """``refunds@v1 .. @vn``: tiny random adapters (no model is loaded)."""
    return [registry.register(write_random(tmp_path / f"src-{i}", seed=i), "refunds", agent=AGENT).name
            for i in range(1, n + 1)]


def deploy_at(registry: AdapterRegistry, target: Any, when: datetime, **kwargs: Any) -> DeploymentRecord:
    """Deploy ``target`` for AGENT now, then date the deployment ``when`` (history laid out by a test)."""
    dep = registry.deploy(AGENT, target, **kwargs)
    with registry.store.session() as s:
        s.execute(update(Deployment).where(Deployment.id == dep.id).values(created_at=when))
    return registry.deployment(dep.id)


def log_episodes(store: ExperienceStore, start: datetime, scores: Sequence[float | None],
                 outcomes: Sequence[str | None] | None = None, *, step: timedelta = timedelta(minutes=1)) -> list[str]:
    """One finished episode of AGENT per score, ``step`` apart from ``start``; a None score: no feedback."""
    outcomes = list(outcomes) if outcomes is not None else [None] * len(scores)
    assert len(outcomes) == len(scores)
    ops: list[dict[str, Any]] = []
    ids = []
    for i, (score, outcome) in enumerate(zip(scores, outcomes, strict=True)):
        eid, ts = new_id(), (start + i * step).timestamp()
        ids.append(eid)
        ops.append({"op": "episode_start", "id": eid, "agent": AGENT, "ts": ts})
        ops.append({"op": "episode_end", "id": eid, "status": "completed", "outcome": outcome, "ts": ts + 1})
        if score is not None:
            ops.append({"op": "feedback", "id": new_id(), "episode_id": eid, "score": score, "source": "human",
                        "ts": ts + 2})
    store.write_ops(ops)
    return ids


def scores(rng: random.Random, n: int, mean: float, sd: float = 0.15) -> list[float]:
    """``n`` feedback scores around ``mean``, clipped to 0..1 like the CLI's."""
    return [min(1.0, max(0.0, rng.gauss(mean, sd))) for _ in range(n)]


def outcomes(rng: random.Random, n: int, rate: float) -> list[str]:
    return ["resolved" if rng.random() < rate else "escalated" for _ in range(n)]


def history(registry: AdapterRegistry, tmp_path: Path, *, before: tuple[float, float], after: tuple[float, float],
            n_before: int = 50, n_after: int = 50, seed: int = 0) -> tuple[DeploymentRecord, DeploymentRecord]:
    """v1 live from T0 with ``n_before`` episodes (mean score, success rate), v2 from T1 with ``n_after``."""
    rng = random.Random(seed)
    names = register(registry, tmp_path)
    d1 = deploy_at(registry, names[0], T0, actor="alice", reason="first refunds")
    log_episodes(registry.store, T0 + timedelta(hours=1), scores(rng, n_before, before[0]),
                 outcomes(rng, n_before, before[1]))
    d2 = deploy_at(registry, names[1], T1, actor="sleep", reason="night run")
    log_episodes(registry.store, T1 + timedelta(hours=1), scores(rng, n_after, after[0]),
                 outcomes(rng, n_after, after[1]))
    return d1, d2
