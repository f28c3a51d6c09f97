"""The generate stage: one adapter per planned skill and candidate generator, registered, validated.

For each skill the plan trains, in plan order, and each of its candidate generators
(:attr:`~agent_sleep.selectors.plan.SkillPlan.generators`: usually one; ``sft`` and ``t2l`` for a skill
with conversations and a description), in order: the generator (by name) turns the skill's material
into a LoRA, ``write`` puts the PEFT folder at ``<run>/adapters/<skill>`` (``<run>/adapters/<skill>/<generator>``
when there are several), the registry takes it in as the next candidate version (its ``sources`` name
the run, the skill, the generator and what it was trained on), and the validation every deploy runs
(finite weights, delta norm, reload) checks it once now, so a broken adapter is rejected, with the
failing check recorded, before any evaluation time is spent. The held-out probes never go into a
generation request. Every candidate of a skill gets the same material, and the evaluate stage asks all
of them the same probes.

Resumable at every step: a version already registered for (this run, this skill, this generator) is
reused; a complete folder in the run folder is registered without generating again; progress is saved
after each candidate. A generator that cannot be built (not registered, no checkpoint, a missing
dependency) or that refuses the material is that candidate's ``failed``, with the reason; the other
candidates and skills go on. An unreachable database is the run's problem and propagates.

The stage result, per skill: ``status`` (``generated`` when any candidate was; else ``invalid``,
``failed`` or ``skipped``), ``generator`` (the first candidate) and ``candidates``, one entry per
generator: ``status``, ``reason``, ``adapter``, ``generator_version``, ``generate_seconds``. A skill with
one candidate also carries that candidate's fields at the top, as before.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.adapters.artifact import read_manifest, set_routing
from agent_sleep.adapters.manifest import RoutingSpec
from agent_sleep.consolidation import faults
from agent_sleep.consolidation.config import GeneratorSettings, generator_settings_class
from agent_sleep.consolidation.context import RunContext
from agent_sleep.errors import AgentSleepError, InvalidInputError, StoreError
from agent_sleep.generators.registry import get_generator
from agent_sleep.interfaces import GenerationRequest, Generator, SectionedGenerator
from agent_sleep.key_terms import sentences
from agent_sleep.registry.records import AdapterVersionRecord, StackItem
from agent_sleep.selectors.plan import ConsolidationPlan, SkillPlan

if TYPE_CHECKING:
    from agent_sleep.models.loader import BaseModelHandle

__all__ = ["candidates_of", "generate", "generation_request", "registered_for", "routing_keys"]

log = logging.getLogger("agent_sleep.consolidation")
FINAL = frozenset({"generated", "invalid", "failed", "skipped"})
DEFAULT_TRAINING_SECONDS = 90.0
"""Training time per candidate when the config names none: ~18 sft steps of 8 conversations on a 2-core
CPU, enough to learn a few dozen corrections; a one-pass generator (d2l, t2l) needs a fraction of it."""
_TRAINING_SHARE = 0.5  # of the run's remaining time, split across the candidates still to train


def registered_for(ctx: RunContext, skill: str, generator: str | None = None) -> AdapterVersionRecord | None:
    """The version this run registered for ``skill`` (made by candidate ``generator``, if given; the newest,
    should there be several)."""
    found = [r for r in ctx.registry.adapters(skill=skill) if (r.sources or {}).get("run") == ctx.run_id
             and (generator is None or (r.sources or {}).get("generator", r.generator) == generator)]  # fmt: skip
    return found[-1] if found else None


def candidates_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A skill's candidate entries in the stage result (an entry saved before candidates existed is one)."""
    if "candidates" in entry:
        return list(entry["candidates"])
    return [entry] if entry else []


def build_generator(name: str, handle: BaseModelHandle, settings: GeneratorSettings) -> Generator[Any]:
    """Generator ``name`` on the run's base model, with its configured knobs."""
    settings_cls = generator_settings_class(name)
    if settings_cls is not None:
        return get_generator(name, handle=handle, config=settings_cls.model_validate(settings.settings),
                             progress=False)  # fmt: skip
    return get_generator(name, handle=handle, **settings.settings)


def generation_request(skill: SkillPlan, budget: float | None, *,
                       separate_documents: bool = False) -> GenerationRequest:  # fmt: skip
    """What a candidate generator of ``skill`` is given: its documents (each under its title, if any), conversations,
    description and time budget. The documents are one text, joined by blank lines, unless ``separate_documents``:
    a generator whose ``separate_documents`` attribute is true (``d2l``, which rank-concatenates them, each chunked
    and gated on its own: :meth:`~agent_sleep.generators.d2l.D2LGenerator.internalize_documents`) gets them one
    by one."""
    texts = tuple(f"# {d.title}\n\n{d.text}" if d.title else d.text for d in skill.documents)
    docs = texts if separate_documents or len(texts) < 2 else ("\n\n".join(texts),)
    return GenerationRequest(documents=docs, conversations=tuple(c.messages for c in skill.conversations),
                             description=skill.description or None, budget_seconds=budget)  # fmt: skip


def _sources(ctx: RunContext, skill: SkillPlan, generator: str) -> dict[str, Any]:
    return {"episodes": [c.episode_id for c in skill.conversations], "documents": [d.id for d in skill.documents],
            "instructions": [i.feedback_id for i in skill.instructions],
            "description": skill.description or f"{skill.skill}, consolidated by run {ctx.run_id}",
            "run": ctx.run_id, "skill": skill.skill, "generator": generator,
            "candidates": list(skill.generators)}  # fmt: skip


def _folder(ctx: RunContext, skill: SkillPlan, generator: str) -> Path:
    base = ctx.folder / "adapters" / skill.skill
    return base if len(skill.generators) == 1 else base / generator


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


class _Unavailable(AgentSleepError):
    """A candidate generator that cannot be built here (its entry says why)."""


def _generator(ctx: RunContext, name: str, generators: dict[str, Generator[Any]]) -> Generator[Any]:
    """Generator ``name`` (built once per stage); _Unavailable, saying why, when it cannot be built."""
    gen = generators.get(name)
    if gen is None:
        handle = ctx.runtime.handle  # the base model failing to load is the run's problem, not this candidate's
        try:
            gen = generators[name] = build_generator(name, handle, ctx.config.generator(name))
            routing = ctx.config.routing
            if routing is not None and name in routing.generators and isinstance(gen, SectionedGenerator) \
                    and "sections" not in ctx.config.generator(name).settings:  # fmt: skip
                gen.sections = True  # routed: a long document keeps every chunk, each a routed section (d2l)
        except StoreError:
            raise
        except Exception as exc:  # not registered, no checkpoint, a missing dependency: this candidate fails
            expected = isinstance(exc, AgentSleepError)
            log.log(logging.INFO if expected else logging.WARNING, "run %s: generator %s unavailable: %s",
                    ctx.run_id, name, exc, exc_info=not expected)  # fmt: skip
            raise _Unavailable(f"generator {name!r} is not available: {type(exc).__name__}: {exc}") from exc
    return gen


def _register(ctx: RunContext, skill: SkillPlan, generator: str, entry: dict[str, Any], budget: float | None,
              generators: dict[str, Generator[Any]]) -> AdapterVersionRecord:  # fmt: skip
    folder = _folder(ctx, skill, generator)
    if not _complete_folder(folder):
        gen = _generator(ctx, generator, generators)
        entry["generator_version"] = gen.version
        started = time.perf_counter()
        separate = bool(getattr(gen, "separate_documents", False))
        result = gen.generate(generation_request(skill, budget, separate_documents=separate))
        folder.parent.mkdir(parents=True, exist_ok=True)
        gen.write(result, folder, sources=_sources(ctx, skill, generator), skill=skill.skill)
        entry["generate_seconds"] = round(time.perf_counter() - started, 3)
        training = getattr(result, "summary", None)
        if callable(training):
            entry["training"] = training()
        faults.fault_point("generate:after_write")
    routing = ctx.config.routing
    if routing is not None and generator in routing.generators:  # again on a resume: the write is idempotent
        # the generator's routed sections (a long document's chunks) stay, and the keys of what it kept replace the
        # documents' first sentences; the folder's integrity was checked above (_complete_folder) or it was just written
        manifest = read_manifest(folder)
        written = manifest.routing if manifest is not None else None
        info = (manifest.generator.model_extra or {}) if manifest is not None else {}
        kept = list(info.get("routing_keys") or [])[: routing.max_keys]
        set_routing(folder, RoutingSpec(threshold=routing.threshold_for(generator),
                                        name_bonus=routing.name_bonus_for(generator),
                                        keys=kept or routing_keys(skill, routing.max_keys),
                                        group=generator if generator in routing.exclusive else None,
                                        sections=written.sections if written is not None else []))  # fmt: skip
    record = ctx.registry.register(folder, skill.skill, description=skill.description or None, kind=generator,
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


def _one(ctx: RunContext, skill: SkillPlan, generator: str, budget: float | None,
         generators: dict[str, Generator[Any]]) -> dict[str, Any]:  # fmt: skip
    """One candidate: its entry in the stage result."""
    entry: dict[str, Any] = {"generator": generator}
    try:
        record = registered_for(ctx, skill.skill, generator) or _register(ctx, skill, generator, entry, budget,
                                                                          generators)  # fmt: skip
    except StoreError:
        raise
    except AgentSleepError as exc:  # unavailable, the generator refused the material, or wrote something unusable
        reason = str(exc) if isinstance(exc, _Unavailable) else f"{type(exc).__name__}: {exc}"
        return {**entry, "status": "failed", "reason": reason}
    entry.update(adapter=record.name, generator_version=entry.get("generator_version") or _made_by(record))
    reason = _validate(ctx, record)
    if reason is not None:
        return {**entry, "status": "invalid", "reason": reason}
    return {**entry, "status": "generated"}


def _summary(skill: SkillPlan, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """A skill's entry from its candidates' (see the module docstring)."""
    out: dict[str, Any] = {"generator": skill.generator, "train_items": len(skill.documents) + len(skill.conversations),
                           "candidates": candidates}  # fmt: skip
    statuses = [c.get("status") for c in candidates]
    if len(skill.generators) == 1 and candidates:
        out.update({k: v for k, v in candidates[0].items() if k != "generator"})
        return out
    if len(candidates) < len(skill.generators) or any(s not in FINAL for s in statuses):
        out["status"] = "pending"
    elif "generated" in statuses:
        out["status"] = "generated"
    else:
        out["status"] = next(s for s in ("invalid", "failed", "skipped") if s in statuses)
        out["reason"] = "; ".join(f"{c['generator']}: {c.get('reason') or c['status']}" for c in candidates)
    return out


def generate(ctx: RunContext, plan: ConsolidationPlan, skills: list[str], progress: dict[str, Any]) -> dict[str, Any]:
    """Make an adapter for each candidate of each skill in ``skills``; ``progress`` is what an earlier attempt saved."""
    done: dict[str, Any] = dict(progress.get("skills") or {})
    generators: dict[str, Generator[Any]] = {}
    todo = [s for s in skills if (done.get(s) or {}).get("status") not in FINAL]
    made = {s: {c["generator"]: c for c in candidates_of(done.get(s) or {}) if c.get("status") in FINAL}
            for s in todo}  # fmt: skip
    left = sum(len([g for g in plan.skill(s).generators if g not in made[s]]) for s in todo)
    for name in todo:
        skill = plan.skill(name)
        for generator in skill.generators:
            if generator in made[name]:
                continue
            share = ctx.remaining() * _TRAINING_SHARE / max(left, 1)
            left -= 1
            configured = ctx.config.generator(generator).budget_seconds
            if share <= 0:
                entry: dict[str, Any] = {"generator": generator, "status": "skipped",
                                         "reason": "the run's time budget is spent"}  # fmt: skip
            else:
                budget = min(DEFAULT_TRAINING_SECONDS if configured is None else configured, share)
                of = f" (candidate {skill.generators.index(generator) + 1} of {len(skill.generators)})" \
                    if len(skill.generators) > 1 else ""  # fmt: skip
                ctx.say(f"generate: {name} with {generator}{of} ({len(skill.conversations)} conversation(s), "
                        f"{len(skill.documents)} document(s), {len(skill.instructions)} instruction(s), at most "
                        f"{budget:.0f} s)")  # fmt: skip
                entry = _one(ctx, skill, generator, budget, generators)
                ctx.say(f"generate: {name} ({generator}): {entry.get('adapter') or '-'} {entry['status']}"
                        + (f" ({entry['reason']})" if entry.get("reason") else ""))  # fmt: skip
            made[name][generator] = entry
            done[name] = _summary(skill, [made[name][g] for g in skill.generators if g in made[name]])
            ctx.runs.save_progress(ctx.run_id, "generate", {"skills": done}, owner=ctx.owner)
            faults.fault_point("generate:after_candidate")
    return {"skills": done}


def routing_keys(skill: SkillPlan, limit: int) -> list[str]:
    """What a routed adapter of ``skill`` answers: the last user message before each training conversation's
    final answer; else its documents' sentences (three words or more); else its description. Deduplicated,
    in order, at most ``limit``."""
    keys: list[str] = []
    for conv in skill.conversations:
        users = [str(m.get("content") or "") for m in conv.messages if m.get("role") == "user"]
        if users:
            keys.append(users[-1])
    if not keys:
        keys = [t for d in skill.documents for t in sentences(d.text)]
    if not keys and skill.description.strip():
        keys = [skill.description]
    out = list(dict.fromkeys(k.strip() for k in keys if k.strip()))[:limit]
    if not out:
        raise InvalidInputError(f"skill {skill.skill!r}: nothing to route by (no question, sentence or description)")
    return out
