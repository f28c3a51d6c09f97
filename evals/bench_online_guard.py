"""The online guard's error rates on synthetic traffic: false rollbacks (no real change) and power (a real drop).

To run:  .venv/bin/python evals/bench_online_guard.py [--seeds 4000]

Each trial draws a "before" and an "after" sample of per-episode feedback scores and success
outcomes and runs the guard's decision (:func:`agent_sleep.guard.decide`, the code every check
runs once it has read the two samples from SQL) under a config. Score distributions:
``normal``: a clipped normal (sd 0.25 unless stated); ``thumbs``: 0 or 1; ``five_point``: 0, 0.25, ..,
1 with a fixed shape. Reported:

* **false rollbacks** (same distribution on both sides): one check of 50 episodes a side with
  ``min_episodes = max_episodes = 50`` (one look, a fixed-sample test), also with ``min_drop`` 0 and
  with the score signal alone; and the defaults (looks at 30, 60, 100) under a scheduler that checks
  after every 10 new episodes from 30 to 100: a rollback at any of the 8 checks counts;
* **power**: the share of trials rolled back for a drop of 0.1 / 0.2 in mean score (success rate
  unchanged) and of 0.15 in success rate (scores unchanged): one fixed check at 50 a side, and the
  defaults checked every 10 episodes, by the time 30 / 60 / 100 episodes ran on the new stack
  (100 before it).

Writes evals/results/online_guard.json.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_sleep.guard import OnlineGuardConfig, decide  # noqa: E402

Draw = Callable[[random.Random, int], list[float]]


def normal(mean: float, sd: float = 0.25) -> Draw:
    return lambda rng, n: [min(1.0, max(0.0, rng.gauss(mean, sd))) for _ in range(n)]


def thumbs(rate: float) -> Draw:
    return lambda rng, n: [1.0 if rng.random() < rate else 0.0 for _ in range(n)]


def five_point(shift: float = 0.0) -> Draw:
    levels, weights = [0.0, 0.25, 0.5, 0.75, 1.0], [0.05, 0.1, 0.2, 0.35, 0.3]
    return lambda rng, n: [max(0.0, v - shift) for v in rng.choices(levels, weights, k=n)]


def rollback_rate(config: OnlineGuardConfig, before: tuple[Draw, float], after: tuple[Draw, float], n_before: int,
                  n_after: int, seeds: int, looks: list[int] | None = None) -> float:
    """Share of ``seeds`` trials with a rollback (at any of ``looks``: after-sample sizes, default one look)."""
    hits = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        b = {"score": before[0](rng, n_before), "success": thumbs(before[1])(rng, n_before)}
        a_all = {"score": after[0](rng, n_after), "success": thumbs(after[1])(rng, n_after)}
        for n in looks or [n_after]:
            a = {k: v[:n] for k, v in a_all.items()}
            if decide(b, a, config)[1] == "rollback":
                hits += 1
                break
    return hits / seeds


def main() -> None:
    from evals.record import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4000)
    args = parser.parse_args()
    seeds = args.seeds
    default = OnlineGuardConfig()
    fixed50 = OnlineGuardConfig(min_episodes=50, max_episodes=50)
    fixed50_pure = OnlineGuardConfig(min_episodes=50, max_episodes=50, min_drop=0.0)
    fixed50_score = OnlineGuardConfig(min_episodes=50, max_episodes=50, min_drop=0.0, signals=("score",))
    every_10 = list(range(30, 101, 10))  # a scheduler checking after every 10 new episodes
    same = {"normal": (normal(0.6), 0.7), "thumbs": (thumbs(0.7), 0.7), "five_point": (five_point(), 0.7)}
    out: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "seeds": seeds,
                           "alpha": default.alpha, "false_rollbacks": {}, "power": {}}
    for name, side in same.items():
        row = {
            "fixed_n50_one_check": rollback_rate(fixed50, side, side, 50, 50, seeds),
            "fixed_n50_one_check_min_drop_0": rollback_rate(fixed50_pure, side, side, 50, 50, seeds),
            "fixed_n50_one_check_score_only_min_drop_0": rollback_rate(fixed50_score, side, side, 50, 50, seeds),
            "defaults_checked_every_10_episodes_30_to_100": rollback_rate(default, side, side, 100, 100, seeds,
                                                                         looks=every_10),
        }
        out["false_rollbacks"][name] = row
        print(f"false rollbacks {name:10} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    cases = {
        "score_drop_0.2_normal_sd0.25": ((normal(0.7), 0.7), (normal(0.5), 0.7)),
        "score_drop_0.2_normal_sd0.15": ((normal(0.7, 0.15), 0.7), (normal(0.5, 0.15), 0.7)),
        "score_drop_0.1_normal_sd0.25": ((normal(0.7), 0.7), (normal(0.6), 0.7)),
        "score_drop_0.2_thumbs_0.7_to_0.5": ((thumbs(0.7), 0.7), (thumbs(0.5), 0.7)),
        "success_drop_0.15_0.8_to_0.65": ((normal(0.7), 0.8), (normal(0.7), 0.65)),
    }
    for name, (before, after) in cases.items():
        row = {"fixed_n50": rollback_rate(fixed50, before, after, 50, 50, seeds)}
        for n in (30, 60, 100):  # defaults, checked every 10 episodes: rolled back by the time n have run
            row[f"defaults_by_{n}_episodes"] = rollback_rate(default, before, after, 100, n, seeds,
                                                             looks=[k for k in every_10 if k <= n])
        out["power"][name] = row
        print(f"power {name:34} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    dest = ROOT / "evals" / "results" / "online_guard.json"
    write_results(dest, out)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
