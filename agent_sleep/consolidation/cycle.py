"""One sleep cycle of one agent: select → generate → evaluate → deploy, with its state in SQL.

:func:`run_cycle` is the one entry point (the CLI's ``sleep``, the recipe in ``pipelines/sleep`` and
a scheduler all call it). It claims the agent (:meth:`~.runs.RunStore.claim`: a new run, a run left
by a dead process, the one named by ``resume``, or a recorded ``skipped_overlap`` when another run
is alive), then runs each stage that is not ``done`` yet, keeping a heartbeat while it works:

* **select** (:mod:`.selection`): the planner's plan and one decision row per item;
* **generate** (:mod:`.generation`): one registered, validated candidate version per skill and candidate
  generator (``sft`` and ``t2l`` for a skill with conversations and a description);
* **evaluate** (:mod:`.gating`): the greedy gate on lm-eval scores, fail closed; of a skill's candidates,
  the admitted one with the highest target gain goes on (the result says which were tried and why one won);
* **deploy** (:mod:`.deployment`): the accepted stack, once.

The run then ends with one outcome, always recorded: ``promoted`` (a new stack is live),
``rejected_by_gate`` (candidates were judged and none went live: the gate, adapter validation or the
stack's validation said no), ``no_signal`` (nothing to learn), ``failed`` (an error: a stage raised,
evaluation failed, another deploy got in between, or the time budget ran out before anything was
judged) or ``skipped_overlap``. The episodes and documents of the skills that were judged (rejected,
invalid, or admitted and deployed) are marked consolidated by this run as it ends; ``failed`` and
``no_signal`` consume nothing, so the next cycle sees that material again.

If the database itself goes away mid-run nothing can be recorded: the run is left ``running`` (its
stages saved so far), :func:`run_cycle` returns a result with ``status="running"``, and the next
cycle for the agent (or ``resume=``) takes the run over and finishes it.

A caller that holds the right to run the agent elsewhere (the scheduler's per-agent lease, see
:mod:`agent_sleep.scheduling.leases`) passes a :class:`RunGuard`: it hears the run's id as soon as the run
is claimed, and before each stage that still has to run it is asked whether this process may go on. A
"no" (the lease was lost, or the process is shutting down) stops the run at that stage boundary, left
``running`` for whoever holds the lease next, exactly as a database outage leaves it.

A guard is asked only between stages, so a holder can lose the run while it is inside one (its lease
expired during a long ``generate``, the next worker declared the run orphaned and resumed it). The run's
writes are therefore fenced by its owner (:mod:`.runs`): once another owner holds the run, this process's
next stage write (progress, result, failure) or its finish is refused with
:class:`~agent_sleep.errors.RunTakenOverError` and writes nothing. The cycle then stops as it does for a
"no": it marks no stage failed, does not end the run, and returns ``status="running"`` with an error that
names the run's new owner. (The deploy itself has its own condition, see :mod:`.deployment`.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent_sleep.consolidation import deployment, faults, gating, generation, owners, selection
from agent_sleep.consolidation.config import CycleConfig
from agent_sleep.consolidation.context import RunContext
from agent_sleep.consolidation.incumbent import incumbent
from agent_sleep.consolidation.planning import Planner, default_planner
from agent_sleep.consolidation.report import write_report
from agent_sleep.consolidation.result import CandidateResult, CycleResult, SkillResult, SuiteDelta
from agent_sleep.consolidation.runs import Claim, Outcome, RunStore
from agent_sleep.errors import AgentSleepError, ConfigError, DatabaseUnavailableError, RunTakenOverError
from agent_sleep.registry import AdapterRegistry
from agent_sleep.registry.refs import parse_adapter_ref
from agent_sleep.selectors.plan import ConsolidationPlan, SkillPlan
from agent_sleep.store.models import utcnow
from agent_sleep.store.store import ExperienceStore

if TYPE_CHECKING:
    from agent_sleep.runtime.live import LiveRuntime

__all__ = ["RunGuard", "run_cycle"]

log = logging.getLogger("agent_sleep.consolidation")
JUDGED = frozenset({"rejected", "invalid"})  # statuses whose material a run consumes (admitted: once deployed)


class RunGuard(Protocol):
    """Who else may drive the agent's runs (see the module docstring); the scheduler's lease is one."""

    def claimed(self, run_id: str) -> None:
        """The run this call drives (new or resumed), before any stage runs."""

    def holds(self) -> str | None:
        """None while this process may go on; else why it must stop (checked before each stage that runs)."""


class _Stopped(Exception):
    """The guard said stop: the run is left ``running`` for the next holder."""


def run_cycle(agent: str, *, config: CycleConfig | None = None, store: ExperienceStore | None = None,
              registry: AdapterRegistry | None = None, runtime: LiveRuntime | None = None,
              planner: Planner | None = None, resume: str | None = None, now: datetime | None = None,
              progress: Callable[[str], None] | None = None, guard: RunGuard | None = None) -> CycleResult:  # fmt: skip
    """Run (or resume) one sleep cycle for ``agent`` and return how it ended (see the module docstring).

    Handles: ``runtime`` (a :class:`~agent_sleep.runtime.live.LiveRuntime`; default: one made on the
    registry when a stage first needs the model), else ``registry``, else ``store`` (default: the
    configured database). ``planner``: the select stage's (default: the selectors' ``build_plan``).
    ``resume``: a run id (or unique prefix) to continue; a finished run's result is returned as it is. A
    resumed run keeps the config it started with (only ``stale_after_seconds`` comes from ``config``).
    ``now``: the time the planner sees. ``progress`` receives one line per step, for a person.
    ``guard``: told the run's id once claimed, asked before each stage (see the module docstring).
    """
    config = config or CycleConfig()
    if config.agent is not None and config.agent != agent:
        raise ConfigError(f"the cycle config is for agent {config.agent!r}, not {agent!r}")
    if planner is None and resume is None:
        planner = default_planner()  # ConfigError now, before a run is recorded, if none is installed
    if registry is None:
        registry = runtime.registry if runtime is not None else AdapterRegistry(store)
    runs = RunStore(registry.store)
    root = registry.store.settings.data_dir.expanduser().resolve() / "runs"
    owner = owners.new_owner()
    try:
        started = utcnow()
        claim = runs.claim(agent, owner=owner, config=config.model_dump(mode="json"),
                           folder=lambda run_id: str(root / run_id), resume=resume,
                           alive=lambda r: owners.is_alive(r.owner, r.heartbeat_at, now=started,
                                                           stale_after=config.stale_after_seconds))  # fmt: skip
        say = progress or (lambda _line: None)
        if claim.kind == "finished":
            say(f"run {claim.run.id} ended {claim.run.outcome} before; nothing to do")
            return _stored(claim)
        if claim.kind == "skipped":
            say(f"skipped: {claim.run.error}")
            result = CycleResult(run_id=claim.run.id, agent=agent, outcome="skipped_overlap", error=claim.run.error,
                                 started_at=claim.run.started_at, ended_at=claim.run.ended_at)  # fmt: skip
            runs.finish(claim.run.id, "skipped_overlap", owner=owner, summary=result.to_json(), error=claim.run.error)
            return result

        if claim.kind == "resumed":
            config = _resumed_config(claim, config)
        if guard is not None:
            guard.claimed(claim.run.id)

        def make_runtime() -> LiveRuntime:
            from agent_sleep.runtime.live import LiveRuntime

            if runtime is not None:
                return runtime
            say(f"loading the base model {registry.store.settings.model}")
            return LiveRuntime(registry, max_delta_norm=config.max_delta_norm)

        spent = sum(s.seconds or 0.0 for s in runs.stages(claim.run.id).values() if s.status == "done")
        ctx = RunContext(run_id=claim.run.id, owner=owner, agent=agent, config=config, registry=registry, runs=runs,
                         folder=Path(claim.run.folder or root / claim.run.id), say=say, make_runtime=make_runtime,
                         deadline=time.monotonic() + config.budget_seconds - spent)  # fmt: skip
        ctx.folder.mkdir(parents=True, exist_ok=True)
        verb = "resuming" if claim.kind == "resumed" else "starting"
        say(f"{verb} run {ctx.run_id} for {agent} (folder {ctx.folder})")
        with _heartbeat(runs, ctx.run_id, owner, interval=min(30.0, config.stale_after_seconds / 4)):
            return _Cycle(ctx, claim, planner, now or utcnow(), guard).run()
    finally:
        owners.release(owner)


def _resumed_config(claim: Claim, given: CycleConfig) -> CycleConfig:
    """The config the run started with (a rerun judges by the same rules); ``given`` if that no longer validates."""
    try:
        return CycleConfig.model_validate(claim.run.config)
    except ValueError as exc:
        log.warning("run %s: its stored config no longer validates (%s); resuming with the one given", claim.run.id,
                    exc)
        return given


def _candidates(sp: SkillPlan, made: dict[str, Any], judged: dict[str, Any] | None) -> list[CandidateResult]:
    """Each candidate generator of a skill: what the generate stage made and what the gate said of it."""
    by_gen = {c["generator"]: c for c in generation.candidates_of(made)}
    verdicts = {v["generator"]: v for v in (judged or {}).get("candidates") or []}
    if judged is not None and not verdicts and len(sp.generators) == 1:  # saved before candidates existed
        verdicts = {sp.generator: judged}
    out = []
    for gen in sp.generators:
        m, v = by_gen.get(gen) or {}, verdicts.get(gen)
        fields: dict[str, Any] = {
            "generator": gen, "generator_version": m.get("generator_version"), "adapter": m.get("adapter"),
            "version": parse_adapter_ref(m["adapter"]).version if m.get("adapter") else None,
            "generate_seconds": m.get("generate_seconds"), "chosen": (judged or {}).get("winner") == gen,
        }  # fmt: skip
        if m.get("status") in ("invalid", "failed", "skipped"):
            fields.update(status=m["status"], reasons=[m.get("reason") or m["status"]])
        elif v is not None:
            fields.update(status=v["status"], reasons=v["reasons"], weight=v.get("weight"), routed=v.get("routed"),
                          comparisons=[SuiteDelta.model_validate(c) for c in v["comparisons"]],
                          target_gain=gating.target_gain(v),
                          guard_loss=gating.guard_loss(v) if v["comparisons"] else None)
        out.append(CandidateResult.model_validate(fields))
    return out


def _stored(claim: Claim) -> CycleResult:
    run = claim.run
    if run.summary:
        return CycleResult.model_validate(run.summary)
    return CycleResult(run_id=run.id, agent=run.agent, outcome=run.outcome or "failed",  # type: ignore[arg-type]
                       error=run.error, deployed_stack=run.deployed_stack, folder=run.folder,
                       started_at=run.started_at, ended_at=run.ended_at)  # fmt: skip


@contextmanager
def _heartbeat(runs: RunStore, run_id: str, owner: str, *, interval: float) -> Iterator[None]:
    """Tell the database every ``interval`` seconds that the run's owner is at work (failures are logged)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                if not runs.heartbeat(run_id, owner):
                    log.warning("run %s is no longer owned by %s", run_id, owner)
            except Exception as exc:  # a flaky database must not end the run from this thread
                log.warning("heartbeat of run %s failed: %s", run_id, exc)

    thread = threading.Thread(target=beat, name=f"agent-sleep-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class _Cycle:
    """The stages of one claimed run, and how it ends."""

    def __init__(self, ctx: RunContext, claim: Claim, planner: Planner | None, now: datetime,
                 guard: RunGuard | None = None) -> None:  # fmt: skip
        self.ctx, self.claim, self.planner, self.now, self.guard = ctx, claim, planner, now, guard
        self.results: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}
        self.current: str | None = None

    def run(self) -> CycleResult:
        try:
            try:
                return self._stages()
            except (DatabaseUnavailableError, _Stopped, RunTakenOverError):
                raise
            except Exception as exc:  # every other error ends the run, recorded as failed
                # An error of ours says what went wrong in its message; anything else may be a bug: keep its traceback.
                expected = isinstance(exc, AgentSleepError)
                log.log(logging.INFO if expected else logging.ERROR, "consolidation run %s failed in %s: %s",
                        self.ctx.run_id, self.current, exc, exc_info=not expected)  # fmt: skip
                error = f"{self.current or 'finish'}: {type(exc).__name__}: {exc}"
                if self.current is not None:
                    self.ctx.runs.fail_stage(self.ctx.run_id, self.current, error, self._elapsed(),
                                             owner=self.ctx.owner)  # fmt: skip
                return self._finish("failed", error)
        except DatabaseUnavailableError as exc:
            return self._left(f"the database became unreachable during {self.current or 'finish'}: {exc}. Run "
                              f"{self.ctx.run_id} is left to resume: the next cycle for {self.ctx.agent!r} takes it "
                              "over")  # fmt: skip
        except _Stopped as exc:
            return self._left(f"stopped before {exc}. Run {self.ctx.run_id} is left to resume: the next holder of "
                              f"{self.ctx.agent!r} takes it over")  # fmt: skip
        except RunTakenOverError as exc:
            return self._left(f"{exc}; this process stopped, leaving the run to its new holder")

    def _left(self, error: str) -> CycleResult:
        """The result of a run this process stops without ending it: left ``running`` to whoever holds it next."""
        self.ctx.say(error)
        return CycleResult(run_id=self.ctx.run_id, agent=self.ctx.agent, outcome="failed", status="running",
                           resumed=self.claim.kind == "resumed", error=error, folder=str(self.ctx.folder),
                           stages=self.seconds, started_at=self.claim.run.started_at)  # fmt: skip

    # -- stages ----------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _stage(self, name: str, fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        why = self.guard.holds() if self.guard is not None else None
        if why is not None:
            raise _Stopped(f"{name}: {why}")
        rec = self.ctx.runs.begin_stage(self.ctx.run_id, name, owner=self.ctx.owner)
        if rec.status == "done":
            self.results[name], self.seconds[name] = rec.result, rec.seconds or 0.0
            return rec.result
        self.current, self._t0 = name, time.perf_counter()
        if rec.attempt > 1:
            self.ctx.say(f"{name}: attempt {rec.attempt}, continuing from what the earlier one saved")
        out = fn(rec.result)
        result, decisions = out if isinstance(out, tuple) else (out, None)
        seconds = self._elapsed()
        self.ctx.runs.complete_stage(self.ctx.run_id, name, result, seconds, decisions, owner=self.ctx.owner)
        self.ctx.say(f"{name}: done in {seconds:.1f} s")
        self.results[name], self.seconds[name], self.current = result, seconds, None
        return result  # type: ignore[no-any-return]

    def _select(self, _progress: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        planner = self.planner or default_planner()
        reference = incumbent(self.ctx.registry, self.ctx.agent).reference_texts
        result, rows = selection.select(self.ctx.store, self.ctx.agent, self.ctx.config, planner, now=self.now,
                                        reference_texts=reference)  # fmt: skip
        stats: dict[str, dict[str, int]] = {}
        for row in rows:
            counts = stats.setdefault(row["selector"], {"kept": 0, "dropped": 0})
            counts["kept" if row["kept"] else "dropped"] += 1
        result["stats"] = stats
        self.ctx.say(f"select: {len(result['skills'])} skill(s) to train"
                     + (f", {len(result['left_out'])} left out" if result["left_out"] else "")
                     + f"; {len(rows)} decision(s)")  # fmt: skip
        faults.fault_point("select:after_plan")
        return result, rows

    def _stages(self) -> CycleResult:
        ctx = self.ctx
        chosen = self._stage("select", self._select)
        plan = ConsolidationPlan.model_validate(chosen["plan"])
        skills: list[str] = chosen["skills"]
        if not skills:
            return self._finish("no_signal")
        made = self._stage("generate", lambda p: generation.generate(ctx, plan, skills, p))
        judged = self._stage("evaluate", lambda p: gating.evaluate(ctx, plan, made["skills"], p))
        self._stage("deploy", lambda p: deployment.deploy(ctx, judged))
        return self._finish(*self._outcome())

    # -- the end ---------------------------------------------------------------------------------
    def _skills(self) -> list[SkillResult]:
        chosen = self.results.get("select") or {}
        if not chosen:
            return []
        plan = ConsolidationPlan.model_validate(chosen["plan"])
        made = (self.results.get("generate") or {}).get("skills") or {}
        judged = self.results.get("evaluate") or {}
        live = {s["skill"]: s["adapter"] for s in (judged.get("incumbent") or {}).get("skills", [])}
        out = []
        for sp in plan.skills:
            g, e = made.get(sp.skill) or {}, (judged.get("skills") or {}).get(sp.skill)
            candidates = _candidates(sp, g, e)
            lead = g  # one candidate: its entry; several: the winner's, if any
            if len(sp.generators) > 1:
                winner = (e or {}).get("winner")
                lead = next((c for c in generation.candidates_of(g) if winner and c["generator"] == winner), {})
            fields: dict[str, Any] = {
                "skill": sp.skill, "generator": lead.get("generator") or sp.generator,
                "generator_version": lead.get("generator_version"), "adapter": lead.get("adapter"),
                "replaces": live.get(sp.skill), "probes": len(sp.probes),
                "version": parse_adapter_ref(lead["adapter"]).version if lead.get("adapter") else None,
                "train_items": len(sp.documents) + len(sp.conversations),
                "generate_seconds": lead.get("generate_seconds"),
                "candidates": candidates, "winner": (e or {}).get("winner"), "why": (e or {}).get("why"),
            }  # fmt: skip
            if sp.skill in chosen.get("left_out", {}):
                fields.update(status="skipped", reasons=[chosen["left_out"][sp.skill]], candidates=[])
            elif g.get("status") in ("invalid", "failed", "skipped"):
                fields.update(status=g["status"], reasons=[g.get("reason") or g["status"]])
            elif e is not None:
                fields.update(status=e["status"], reasons=e["reasons"], weight=e.get("weight"), routed=e.get("routed"),
                              comparisons=[SuiteDelta.model_validate(c) for c in e["comparisons"]])  # fmt: skip
            out.append(SkillResult.model_validate(fields))
        return out

    def _outcome(self) -> tuple[Outcome, str | None]:
        dep = self.results.get("deploy") or {}
        trained = set((self.results.get("select") or {}).get("skills") or [])
        skills = [s for s in self._skills() if s.skill in trained]
        if dep.get("deployed"):
            return "promoted", None
        if dep.get("conflict"):
            return "failed", dep["conflict"]
        if dep.get("rejected"):
            return "rejected_by_gate", f"the accepted stack failed validation: {dep['rejected']}"
        failed = [f"{s.skill}: {'; '.join(s.reasons)}" for s in skills if s.status == "failed"]
        if failed:
            return "failed", "generation failed for " + " | ".join(failed)
        if any(s.status in JUDGED for s in skills):
            return "rejected_by_gate", None
        if any(s.status == "skipped" for s in skills):
            return "failed", "the run's time budget was spent before any skill was judged"
        return "no_signal", None

    def _consume(self, outcome: Outcome, skills: list[SkillResult]) -> dict[str, int]:
        """Mark the material of the judged skills consolidated by this run (see the module docstring)."""
        if outcome not in ("promoted", "rejected_by_gate"):
            return {"episodes": 0, "documents": 0}
        plan = ConsolidationPlan.model_validate(self.results["select"]["plan"])
        deployed = bool((self.results.get("deploy") or {}).get("deployed"))
        used = {s.skill for s in skills if s.status in JUDGED or (s.status == "admitted" and deployed)}
        items: dict[tuple[str, str], None] = {}
        for sp in plan.skills:
            if sp.skill in used:
                items.update(dict.fromkeys(sp.train_sources))
                items.update(dict.fromkeys((p.source_kind, p.source_id) for p in sp.probes))
                items.update(dict.fromkeys(("episode", e) for e in sp.instruction_episodes))
        episodes = [i for k, i in items if k == "episode"]
        documents = [i for k, i in items if k == "document"]
        store = self.ctx.store
        n_episodes = store.mark_consolidated(episodes, self.ctx.run_id) if episodes else 0
        n_documents = 0
        if documents:  # mark_documents_consolidated comes with the selectors' store changes
            n_documents = store.mark_documents_consolidated(documents, self.ctx.run_id)  # type: ignore[attr-defined]
        return {"episodes": n_episodes, "documents": n_documents}

    def _finish(self, outcome: Outcome, error: str | None = None) -> CycleResult:
        ctx = self.ctx
        self.current = None
        skills = self._skills()
        consumed = self._consume(outcome, skills)
        faults.fault_point("finish:after_mark")
        judged = self.results.get("evaluate") or {}
        dep = self.results.get("deploy") or {}
        incumbent_stack = (judged.get("incumbent") or {}).get("stack")
        result = CycleResult(
            run_id=ctx.run_id, agent=ctx.agent, outcome=outcome, resumed=self.claim.kind == "resumed",
            deployed_stack=dep.get("stack") if dep.get("deployed") else None, incumbent_stack=incumbent_stack,
            skills=skills, stages={k: round(v, 3) for k, v in self.seconds.items()},
            selection=(self.results.get("select") or {}).get("stats") or {}, consumed=consumed, error=error,
            folder=str(ctx.folder), started_at=self.claim.run.started_at, ended_at=utcnow(),
        )  # fmt: skip
        write_report(ctx.folder, result, self.results, ctx.runs.stages(ctx.run_id))
        ctx.runs.finish(ctx.run_id, outcome, owner=ctx.owner, summary=result.to_json(),
                        deployed_stack=result.deployed_stack, error=error)  # fmt: skip
        ctx.say(f"run {ctx.run_id} ended: {outcome}" + (f" ({error})" if error else ""))
        return result
