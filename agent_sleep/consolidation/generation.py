"""The generate stage: one adapter per planned skill, written into the run folder, registered, validated.

For each skill the plan trains, in plan order: the skill's generator (by name) turns the skill's
material into a LoRA, ``write`` puts the PEFT folder at ``<run>/adapters/<skill>``, the registry takes
it in as the next candidate version (its ``sources`` name the run, the skill and what it was trained
on), and the validation every deploy runs (finite weights, delta norm, reload) checks it once now, so
a broken adapter is rejected, with the failing check recorded, before any evaluation time is spent.
The held-out probes never go into a generation request.

Resumable at every step: a version already registered for (this run, this skill) is reused; a
complete folder in the run folder is registered without generating again; progress is saved after
each skill. A generator error is that skill's ``failed`` (the others go on); an unreachable database
is the run's problem and propagates.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.consolidation import faults
from agent_sleep.consolidation.config import GeneratorSettings, generator_settings_class
from agent_sleep.consolidation.context import RunContext
from agent_sleep.errors import AgentSleepError, StoreError
from agent_sleep.generators.registry import get_generator
from agent_sleep.interfaces import GenerationRequest, Generator
from agent_sleep.registry.records import AdapterVersionRecord, StackItem
from agent_sleep.selectors.plan import ConsolidationPlan, SkillPlan

if TYPE_CHECKING:
    from agent_sleep.models.loader import BaseModelHandle

__all__ = ["generate", "registered_for"]

FINAL = frozenset({"generated", "invalid", "failed", "skipped"})
DEFAULT_TRAINING_SECONDS = 90.0
"""Training time per skill when the config names none: ~18 sft steps of 8 conversations on a 2-core CPU,
enough to learn a few dozen corrections; a one-pass generator (d2l) needs a fraction of it."""
_TRAINING_SHARE = 0.5  # of the run's remaining time, split across the skills still to train


def registered_for(ctx: RunContext, skill: str) -> AdapterVersionRecord | None:
    """The version this run registered for ``skill`` (the newest, should there be several)."""
    found = [r for r in ctx.registry.adapters(skill=skill) if (r.sources or {}).get("run") == ctx.run_id]
    return found[-1] if found else None


def build_generator(name: str, handle: BaseModelHandle, settings: GeneratorSettings) -> Generator[Any]:
    """Generator ``name`` on the run's base model, with its configured knobs."""
    settings_cls = generator_settings_class(name)
    if settings_cls is not None:
        return get_generator(name, handle=handle, config=settings_cls.model_validate(settings.settings),
                             progress=False)  # fmt: skip
    return get_generator(name, handle=handle, **settings.settings)


def _request(skill: SkillPlan, budget: float | None) -> GenerationRequest:
    docs = "\n\n".join(f"# {d.title}\n\n{d.text}" if d.title else d.text for d in skill.documents)
    return GenerationRequest(documents=(docs,) if docs else (),
                             conversations=tuple(c.messages for c in skill.conversations),
                             description=skill.description or None, budget_seconds=budget)  # fmt: skip


def _sources(ctx: RunContext, skill: SkillPlan) -> dict[str, Any]:
    return {"episodes": [c.episode_id for c in skill.conversations], "documents": [d.id for d in skill.documents],
            "description": skill.description or f"{skill.skill}, consolidated by run {ctx.run_id}",
            "run": ctx.run_id, "skill": skill.skill}  # fmt: skip


def _complete_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a whole adapter (write_adapter publishes in one rename); a broken one is removed."""
    from agent_sleep.adapters.artifact import inspect_adapter

    if not folder.exists():
        return False
    try:
        inspect_adapter(folder)
        return True
    except (AgentSleepError, OSError):
        shutil.rmtree(folder, ignore_errors=True)
        return False


def _register(ctx: RunContext, skill: SkillPlan, entry: dict[str, Any], budget: float | None,
              generators: dict[str, Generator[Any]]) -> AdapterVersionRecord:  # fmt: skip
    folder = ctx.folder / "adapters" / skill.skill
    if not _complete_folder(folder):
        gen = generators.get(skill.generator)
        if gen is None:
            gen = generators[skill.generator] = build_generator(skill.generator, ctx.runtime.handle,
                                                                ctx.config.generator(skill.generator))
        entry["generator_version"] = gen.version
        started = time.perf_counter()
        result = gen.generate(_request(skill, budget))
        folder.parent.mkdir(parents=True, exist_ok=True)
        gen.write(result, folder, sources=_sources(ctx, skill), skill=skill.skill)
        entry["generate_seconds"] = round(time.perf_counter() - started, 3)
        training = getattr(result, "summary", None)
        if callable(training):
            entry["training"] = training()
        faults.fault_point("generate:after_write")
    record = ctx.registry.register(folder, skill.skill, description=skill.description or None, kind=skill.generator,
                                   agent=ctx.agent, run_id=ctx.run_id)  # fmt: skip
    faults.fault_point("generate:after_register")
    return record


def _made_by(record: AdapterVersionRecord) -> str | None:
    """The generator version in a registered version's manifest."""
    from agent_sleep.adapters.artifact import inspect_adapter

    try:
        return inspect_adapter(record.path)[1].generator.version
    except (AgentSleepError, OSError):
        return None


def _validate(ctx: RunContext, record: AdapterVersionRecord) -> str | None:
    """None if the version passes the deploy-time validation, else why (the registry records the rejection)."""
    from agent_sleep.runtime.deploy import check_stack

    runtime = ctx.runtime  # the bound its deploys use, so what passes here passes there
    verdict = check_stack(ctx.registry, [StackItem(adapter=record.name)], runtime.handle, None, runtime.max_delta_norm,
                          record=True, actor="consolidation")  # fmt: skip
    return None if verdict.ok else (verdict.reason or "failed validation")


def _one(ctx: RunContext, skill: SkillPlan, budget: float | None, generators: dict[str, Generator[Any]]
         ) -> dict[str, Any]:  # fmt: skip
    entry: dict[str, Any] = {"generator": skill.generator,
                             "train_items": len(skill.documents) + len(skill.conversations)}
    try:
        record = registered_for(ctx, skill.skill) or _register(ctx, skill, entry, budget, generators)
    except StoreError:
        raise
    except AgentSleepError as exc:  # the generator refused the material, or wrote something unusable
        return {**entry, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    entry.update(adapter=record.name, generator_version=entry.get("generator_version") or _made_by(record))
    reason = _validate(ctx, record)
    if reason is not None:
        return {**entry, "status": "invalid", "reason": reason}
    return {**entry, "status": "generated"}


def generate(ctx: RunContext, plan: ConsolidationPlan, skills: list[str], progress: dict[str, Any]) -> dict[str, Any]:
    """Make an adapter for each skill in ``skills``; ``progress`` is what an earlier attempt saved."""
    done: dict[str, Any] = dict(progress.get("skills") or {})
    generators: dict[str, Generator[Any]] = {}
    todo = [s for s in skills if (done.get(s) or {}).get("status") not in FINAL]
    for n, name in enumerate(todo):
        skill = plan.skill(name)
        share = ctx.remaining() * _TRAINING_SHARE / (len(todo) - n)
        configured = ctx.config.generator(skill.generator).budget_seconds
        if share <= 0:
            done[name] = {"generator": skill.generator, "status": "skipped", "reason": "the run's time budget is spent",
                          "train_items": len(skill.documents) + len(skill.conversations)}  # fmt: skip
        else:
            budget = min(DEFAULT_TRAINING_SECONDS if configured is None else configured, share)
            ctx.say(f"generate: {name} with {skill.generator} ({len(skill.conversations)} conversation(s), "
                    f"{len(skill.documents)} document(s), at most {budget:.0f} s)")  # fmt: skip
            done[name] = _one(ctx, skill, budget, generators)
            entry = done[name]
            ctx.say(f"generate: {name}: {entry.get('adapter') or '-'} {entry['status']}"
                    + (f" ({entry['reason']})" if entry.get("reason") else ""))  # fmt: skip
        ctx.runs.save_progress(ctx.run_id, "generate", {"skills": done})
    return {"skills": done}
