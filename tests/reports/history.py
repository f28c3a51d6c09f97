"""TEST CODE: a history of real sleep cycles on the tiny model, for the report tests and ``evals/bench_report.py``.

Each step is what happens to the agent between two reports: a real consolidation run (the test planner,
sft, lm-eval, the gate, deploy) on freshly logged episodes, or a real rollback / skill removal through
the live runtime. Nothing is written to the database by hand.

Steps: ``teach:SKILL`` (six right answers: usually admitted unless already known), ``wrong:SKILL``
(six answers the probes disagree with: rejected), ``quiet`` (nothing new: no_signal), ``rollback``
(validated, with an actor and a reason full of markup), ``remove:SKILL``. ``teach`` and ``wrong`` also log
one badly scored answer, which the planner's ``score`` selector drops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from agent_sleep.consolidation.cycle import run_cycle
from tests.consolidation.conftest import AGENT, FACTS, World, fast_config
from tests.consolidation.planner import simple_planner

ROLLBACK_ACTOR = "on-call <ops&co@example.com>"
ROLLBACK_REASON = '<script>alert("x")</script> guard "general" fell & answers got <b>worse</b> | see #12'


def seed_history(world: World, steps: Iterable[str], *, say: Callable[[str], None] | None = None) -> list[Any]:
    """Run ``steps`` in order; returns each step's result (a CycleResult or a DeployOutcome)."""
    out: list[Any] = []
    for step in steps:
        kind, _, skill = step.partition(":")
        if kind in ("teach", "wrong"):
            question, right = FACTS[skill]
            # "wrong": the answers disagree with what the probes expect (``right``)
            world.teach(skill, 6, answer=None if kind == "teach" else "Paris." if right != "Paris." else "hello world.")
            world.log(question, "I do not know.", skill=skill, score=0.1)
        if kind in ("teach", "wrong", "quiet"):
            result = run_cycle(AGENT, runtime=world.runtime, planner=simple_planner, config=fast_config())
            what = result.outcome
        elif kind == "rollback":
            result = world.runtime.rollback(AGENT, actor=ROLLBACK_ACTOR, reason=ROLLBACK_REASON)
            what = result.status
        elif kind == "remove":
            result = world.runtime.remove_skill(AGENT, skill, actor="ops", reason=f"{skill} is stale")
            what = result.status
        else:
            raise ValueError(f"unknown history step {step!r}")
        out.append(result)
        if say is not None:
            say(f"{step}: {what}")
    return out
