"""The night and the morning after: the demo agent sleeps, wakes up, and the gate and a rollback are shown.

After the day (:mod:`agent_sleep.demo.day`) the store holds the day's episodes, the corrections and
two new documents. :func:`sleep_and_wake` then

1. runs one real consolidation cycle (:func:`~agent_sleep.consolidation.cycle.run_cycle`: the selector
   chain, ``d2l`` on each new document, ``sft`` on the corrected conversations, the lm-eval gate
   against the guard suites and the skills' held-out probes, a hot-swap of what the gate admits),
   with the demo's cycle config (``day/cycle.yaml``);
2. asks the held-out rephrasings again, of the live stack, without the documents in context, and
   prints the before/after table (:func:`~agent_sleep.demo.day.format_table`);
3. replays the same night with a deliberately harmful setting (a learning rate 15x too high), so a
   real, damaging adapter meets the same gate and is rejected and recorded;
4. rolls the agent back to the stack it woke up without, and back again, to show a rollback.

Every number comes from the run: whatever does not help shows in the table and in the gate's reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agent_sleep.consolidation.config import CycleConfig, load_cycle_config
from agent_sleep.consolidation.cycle import run_cycle
from agent_sleep.consolidation.result import CycleResult
from agent_sleep.consolidation.runs import RunStore
from agent_sleep.demo import day
from agent_sleep.interfaces import ExperienceReader
from agent_sleep.selectors.plan import ConsolidationPlan

__all__ = ["CYCLE_CONFIG", "Morning", "harmful_night", "show_rollback", "sleep_and_wake"]

CYCLE_CONFIG = day.DAY_DIR / "cycle.yaml"
HARMFUL_LR = 0.05  # the demo config's sft learning rate is 3e-3


class Morning:
    """What the night produced, for the caller (and the demo's tests)."""

    def __init__(self, result: CycleResult, before: Sequence[day.Answer], after: Sequence[day.Answer],
                 harmful: CycleResult | None) -> None:  # fmt: skip
        self.result, self.before, self.after, self.harmful = result, list(before), list(after), harmful


def _skills_line(result: CycleResult) -> list[str]:
    lines = []
    for s in result.skills:
        deltas = ", ".join(f"{c.role} {c.suite.split('_', 1)[-1]} {c.baseline:.2f}->{c.candidate:.2f}"
                           for c in s.comparisons)  # fmt: skip
        lines.append(f"  {s.skill:<34} {s.generator:<4} {s.status:<9} {deltas or '; '.join(s.reasons)[:90]}")
    return lines


def _replay_planner(plan: ConsolidationPlan) -> Callable[..., Any]:
    """A planner that hands back ``plan`` unchanged (the harmful night relearns the same material)."""
    from agent_sleep.selectors.planner import PlanResult

    def planner(reader: ExperienceReader, agent: str, selection: Mapping[str, Any], /, *, now: datetime,
                reference_texts: Sequence[str]) -> PlanResult:  # fmt: skip
        del reader, agent, selection, now, reference_texts
        return PlanResult(plan=plan, decisions=())

    return planner


def harmful_night(runtime: Any, agent: str, first: CycleResult, config: CycleConfig,
                  echo: Callable[[str], Any] = print) -> CycleResult | None:  # fmt: skip
    """The first night's sft material again, trained with a learning rate far too high and no retain term: the gate
    must refuse."""
    stages = RunStore(runtime.registry.store).stages(first.run_id)
    select = stages.get("select")
    if select is None or "plan" not in select.result:
        return None
    plan = ConsolidationPlan.model_validate(select.result["plan"])
    dialog = [s for s in plan.skills if s.generator == "sft" and s.conversations and s.probes]
    if not dialog:
        echo("  (no sft material to replay; skipped)")
        return None
    replay = plan.model_copy(update={"skills": tuple(dialog)})
    sft = config.generator("sft")
    harmful = config.model_copy(update={"generators": {**config.generators, "sft": sft.model_copy(
        update={"settings": {**sft.settings, "lr": HARMFUL_LR, "converged_loss": None, "max_steps": 12,
                             "retain_weight": 0.0}})}})
    result = run_cycle(agent, runtime=runtime, config=harmful, planner=_replay_planner(replay),  # type: ignore[arg-type]
                       progress=lambda line: echo(f"  {line}"))  # fmt: skip
    return result


def sleep_and_wake(runtime: Any, content: day.DayContent, log: day.DayLog, before: Sequence[day.Answer], *,
                   config: str | Path | CycleConfig = CYCLE_CONFIG, harmful: bool = True,
                   echo: Callable[[str], Any] = print) -> Morning:  # fmt: skip
    """The night (see the module docstring); ``before`` are the held-out answers asked before it."""
    agent = content.agent
    cfg = config if isinstance(config, CycleConfig) else load_cycle_config(config)
    echo(f"\nNight: {agent} sleeps (agent-sleep sleep --agent {agent}): select, generate, evaluate with "
         "lm-eval, deploy what the gate admits.")
    result = run_cycle(agent, runtime=runtime, config=cfg, progress=lambda line: echo(f"  {line}"))
    echo(f"\nThe cycle ended {result.outcome}; live now: {result.deployed_stack or 'the base model (unchanged)'}")
    echo("\n".join(_skills_line(result)))

    chat = runtime.chat_model(agent, max_new_tokens=48)
    probes = [(a.key, a.question) for a in before]
    after = day.ask(chat, probes, content)
    echo(f"\nMorning: the same held-out rephrasings, asked of the live stack ({result.deployed_stack or 'base'}), "
         "no documents in context:\n")
    echo(day.format_table(day.compare(before, after)))
    if result.folder:
        echo(f"\nRun report: {Path(result.folder) / 'report.md'}   (agent-sleep runs show {result.run_id[:8]})")

    bad = None
    if harmful:
        echo(f"\nA harmful adapter: the same night's material, trained with a learning rate of {HARMFUL_LR} "
             "(the config's is 0.003). The same gate judges it:")
        bad = harmful_night(runtime, agent, result, cfg, echo)
        if bad is not None:
            live = runtime.registry.live(agent)
            echo(f"  -> {bad.outcome}; live stack unchanged: {live.stack.name if live else 'base'}")
            echo("\n".join(_skills_line(bad)))

    if result.deployed_stack:
        show_rollback(runtime, agent, result.deployed_stack, lambda: day.ask(chat, probes[:3], content), echo)
    return Morning(result, before, after, bad)


def show_rollback(runtime: Any, agent: str, deployed: str, ask: Callable[[], Sequence[Any]],
                  echo: Callable[[str], Any]) -> None:  # fmt: skip
    """Roll ``agent`` back from the night's stack ``deployed``, ask a few rephrasings there, and roll forward.
    (From the agent's first deployment a rollback returns to the base model.)"""
    echo(f"\nRollback: agent-sleep rollback {agent}")
    out = runtime.rollback(agent, actor="demo", reason="demo: show a rollback")
    live = runtime.registry.live(agent)
    echo(f"  {out.status}: live now {live.stack.name if live and live.stack.items else 'the base model'}")
    again = ask()
    echo(f"  the first {len(again)} rephrasings on the rolled-back stack: {sum(a.correct for a in again)}/"
         f"{len(again)} right")
    out = runtime.deploy(agent, deployed, actor="demo", reason="demo: roll forward again")
    echo(f"  and forward again: {out.status}, live {deployed}")
