"""The evaluate stage: every candidate against the stack it would replace, on the same items, greedily.

Suites, written once as lm-eval tasks into ``<run>/eval/`` (the YAML, the JSONL and, per stack scored,
lm-eval's results and samples JSON under ``results/``):

* ``target_<skill>``: the skill's held-out probes (role ``target`` for that skill);
* ``guards_*``: the shipped guard suites, ``evaluation.guard_limit`` seeded items each (``guard``);
* ``live_<skill>``: the stored probes of each skill live for the agent (``interference``).

Greedy and sequential: *accepted* starts as the live stack (or the base model). For each skill in plan
order, each candidate version (one per candidate generator, in order; each at the
``evaluation.candidate_weights`` in turn until one is admitted) is accepted plus that version
(replacing that skill's live version, if any), gated by :class:`~agent_sleep.evaluation.gate.PairedGate`
against accepted's own scores, on the same items. Among the admitted candidates the winner
(:func:`pick_winner`) is the one with the highest target gain; a tie goes to the smaller guard loss
(the largest drop on a guard suite), then to the first in order. The winner's stack becomes accepted,
and the skill's target suite counts as interference for the skills after it. Every stack is scored
once, on every suite, in one lm-eval call (scored alike, so any two can be paired).

The skill's decision holds the winner's verdict (status, reasons, comparisons, stack, weight) plus
``candidates`` (every candidate's verdict, in order), ``winner`` (its generator, or None) and ``why``
(a sentence saying why it won, or why none did). Rejected candidates are rejected in the registry; an
admitted one that lost keeps the status validation gave it (``approved``, not live), and its eval summary
names the winner.

Routing (config ``routing``): a stack holding routed adapters (their manifests name the requests they
answer, see :mod:`agent_sleep.runtime.routing`) is scored as the runtime runs it: on each item, only the
adapters that apply to its question (every unrouted one, and each routed one whose router fires) - the
item's score is taken from that sub-stack's evaluation. Each distinct sub-stack is evaluated once (on every
suite; cached like any stack), so a night of routed per-document adapters is judged as it will be served,
not as a stack of adapters that never run together; an adapter with routed sections (a long document's chunks)
answers each item with the section its question goes to (``{adapter}#{k}`` in the sub-stack). The verdict's
``routed`` says, per suite, on how many items the candidate fired.

Fail closed: an :class:`~agent_sleep.errors.EvaluationError` ends the run, nothing deployed. Progress
(scores, each candidate's verdict, decisions) is saved after each stack, each verdict and each decision,
so a rerun scores nothing twice; a decision is saved before the registry hears of it and the registry's
side is redone idempotently, so a candidate is rejected once, with the gate's reasons and numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from agent_sleep.adapters.stack import stack_label
from agent_sleep.consolidation import faults
from agent_sleep.consolidation.context import RunContext
from agent_sleep.consolidation.generation import candidates_of
from agent_sleep.consolidation.incumbent import Incumbent, incumbent
from agent_sleep.consolidation.result import SkillResult
from agent_sleep.evaluation.gate import PairedGate
from agent_sleep.evaluation.suites import Suite, SuiteItem, guard_suites
from agent_sleep.interfaces import EvalResult, SuiteRole
from agent_sleep.registry.records import Rejection
from agent_sleep.registry.refs import parse_adapter_ref
from agent_sleep.runtime.routing import applying, section_name, split_section
from agent_sleep.selectors.plan import ConsolidationPlan

__all__ = ["evaluate", "guard_loss", "pick_winner", "stack_label", "target_gain"]

Items = list[tuple[str, float]]


def _suite_name(prefix: str, skill: str) -> str:
    name = f"{prefix}_{skill}"
    return name if len(name) <= 64 else f"{name[:55]}.{hashlib.sha256(skill.encode()).hexdigest()[:8]}"


SHORT_ANSWER_WORDS = 3
"""A probe answer of at most this many words ("64.95", "4 years") must appear in the reply (``contains``);
a longer one, a correction or a confirmed reply written as a sentence, is scored by its key terms
(``keywords``: the numbers, codes and names the question does not give away, half of them at least)."""


def probe_item(index: int, question: str, answer: str, kind: str, system: str | None) -> SuiteItem:
    """One probe as a suite item, scored as :data:`SHORT_ANSWER_WORDS` says."""
    match = "keywords" if len(answer.split()) > SHORT_ANSWER_WORDS else "contains"
    return SuiteItem(id=f"p{index:03d}", question=question, answer=answer, kind=kind, system=system, match=match)


def _suite(name: str, probes: Iterable[tuple[str, str, str, str | None]], max_new_tokens: int) -> Suite:
    """Probes ``(question, answer, kind, system prompt)`` as a suite, each asked under its system prompt."""
    items = tuple(probe_item(i, q, a, kind, system) for i, (q, a, kind, system) in enumerate(probes))
    return Suite(name=name, items=items, max_gen_toks=max_new_tokens)


def _suites(ctx: RunContext, plan: ConsolidationPlan, live: Incumbent, skills: list[str]
            ) -> tuple[list[Suite], dict[str, dict[str, Any]]]:  # fmt: skip
    """The run's suites, and per suite its base role, the skill it belongs to and its size."""
    ev = ctx.config.evaluation
    suites: list[Suite] = [g.model_copy(update={"max_gen_toks": ev.max_new_tokens})
                           for g in guard_suites(limit=ev.guard_limit, seed=ev.seed, folder=ev.guards)]  # fmt: skip
    about = {s.name: {"role": "guard", "skill": None} for s in suites}
    for skill in live.skills:
        if skill.probes:
            suite = _suite(_suite_name("live", skill.skill), ((q, a, "live", system) for q, a, system in skill.probes),
                           ev.max_new_tokens).sample(ev.interference_limit, seed=ev.seed)  # fmt: skip
            suites.append(suite)
            about[suite.name] = {"role": "interference", "skill": skill.skill}
    for name in skills:
        probes = ((p.question, p.answer, p.origin, p.system) for p in plan.skill(name).probes)
        suite = _suite(_suite_name("target", name), probes, ev.max_new_tokens)
        suites.append(suite)
        about[suite.name] = {"role": "target", "skill": name}
    for s in suites:
        about[s.name]["items"] = len(s.items)
    return suites, about


def _to_json(r: EvalResult) -> dict[str, Any]:
    return {"suite": r.suite, "stack": [list(i) for i in r.stack], "metrics": dict(r.metrics), "samples": r.samples,
            "seconds": round(r.seconds, 3), "scores": dict(r.scores), "artifact": r.artifact}  # fmt: skip


def _from_json(d: dict[str, Any]) -> EvalResult:
    return EvalResult(suite=d["suite"], stack=tuple((str(a), float(w)) for a, w in d["stack"]), metrics=d["metrics"],
                      samples=int(d["samples"]), seconds=float(d["seconds"]), scores=d["scores"],
                      artifact=d.get("artifact"))  # fmt: skip


def _with(accepted: Items, adapter: str, weight: float = 1.0) -> Items:
    """``accepted`` with ``adapter`` (at ``weight``) in place of its skill's version, or added at the end."""
    skill = parse_adapter_ref(adapter).skill
    out = [(a, w) for a, w in accepted if parse_adapter_ref(a).skill != skill]
    return [*out, (adapter, weight)]


def target_gain(verdict: dict[str, Any]) -> float | None:
    """The change on the skill's own probes (None: no target comparison)."""
    return next((float(c["delta"]) for c in verdict.get("comparisons") or [] if c["role"] == "target"), None)


def guard_loss(verdict: dict[str, Any]) -> float:
    """The largest drop on a guard suite (negative when every guard suite improved; 0 without any)."""
    return max((-float(c["delta"]) for c in verdict.get("comparisons") or [] if c["role"] == "guard"), default=0.0)


def _rank(verdict: dict[str, Any]) -> tuple[float, float]:
    # rounded: two candidates right on the same items differ by float noise only
    return round(-(target_gain(verdict) or 0.0), 9), round(guard_loss(verdict), 9)


def pick_winner(verdicts: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The admitted verdict with the highest target gain (ties: the smaller guard loss, then the first in
    order), and a sentence saying why it won or why none did."""
    admitted = [v for v in verdicts if v["status"] == "admitted"]
    if not admitted:
        if len(verdicts) == 1:
            return None, f"the candidate was {verdicts[0]['status']}"
        judged = ", ".join(f"{v['generator']} {v['status']}" for v in verdicts)
        return None, f"no candidate was admitted ({judged})"
    best = min(admitted, key=_rank)  # min keeps the first of equals: the order breaks the last tie
    gain, loss = target_gain(best) or 0.0, guard_loss(best)
    if len(verdicts) == 1:
        return best, "the only candidate, admitted"
    others = [v for v in verdicts if v is not best]
    if len(admitted) == 1:
        return best, (f"the only admitted candidate (target {gain:+.3f}); "
                      + ", ".join(f"{v['generator']} {v['status']}" for v in others))
    runner = min((v for v in admitted if v is not best), key=_rank)
    r_gain, r_loss = target_gain(runner) or 0.0, guard_loss(runner)
    if _rank(best)[0] < _rank(runner)[0]:
        why = f"highest target gain: {gain:+.3f} against {r_gain:+.3f} for {runner['generator']}"
    elif _rank(best)[1] < _rank(runner)[1]:
        why = (f"same target gain as {runner['generator']} ({gain:+.3f}); smaller guard loss: {loss:.3f} "
               f"against {r_loss:.3f}")
    else:
        why = (f"same target gain ({gain:+.3f}) and guard loss ({loss:.3f}) as {runner['generator']}; first in "
               "order")
    return best, why


class _Evaluation:
    """One evaluate stage; ``state`` is the stage's (saved) result."""

    def __init__(self, ctx: RunContext, plan: ConsolidationPlan, generated: dict[str, Any], state: dict[str, Any]):
        self.ctx, self.plan, self.state = ctx, plan, state
        self.skills = [s for s, e in generated.items() if e.get("status") == "generated"]
        self.candidates = {s: [(str(c["generator"]), str(c["adapter"])) for c in candidates_of(generated[s])
                               if c.get("status") == "generated"] for s in self.skills}  # fmt: skip
        if "incumbent" not in state:  # the live stack when evaluation began: a rerun compares with the same
            state["incumbent"] = incumbent(ctx.registry, ctx.agent).to_json()
            state["accepted"] = [list(i) for i in Incumbent.from_json(state["incumbent"]).items]
        self.live = Incumbent.from_json(state["incumbent"])
        state.setdefault("results", {})
        state.setdefault("skills", {})
        state.setdefault("candidates", {})
        self.evaluator: Any = None
        self._near: dict[str, dict[str, dict[str, float]]] = {}  # routed adapter -> suite -> item id -> similarity
        self._section: dict[str, dict[str, dict[str, int]]] = {}  # sectioned adapter -> suite -> item id -> section

    def save(self) -> None:
        self.ctx.runs.save_progress(self.ctx.run_id, "evaluate", self.state, owner=self.ctx.owner)

    def scores(self, items: Items) -> dict[str, EvalResult]:
        label = stack_label(items)
        if label not in self.state["results"]:
            if self.evaluator is None:
                from agent_sleep.evaluation.lm_eval import LmEvalEvaluator

                suites, about = _suites(self.ctx, self.plan, self.live, self.skills)
                self.state["suites"] = about
                self.evaluator = LmEvalEvaluator(self.ctx.runtime, suites, self.ctx.folder / "eval",
                                                 batch_size=self.ctx.config.evaluation.batch_size)  # fmt: skip
            n = sum(s["items"] for s in self.state["suites"].values())
            self.ctx.say(f"evaluate: {label} on {len(self.state['suites'])} suites ({n} items)")
            results = self.evaluator.evaluate_suites(items)
            seconds = next(iter(results.values())).seconds
            self.ctx.say(f"evaluate: {label} scored in {seconds:.1f} s")
            self.state["results"][label] = {k: _to_json(v) for k, v in results.items()}
            self.state.setdefault("stack_seconds", {})[label] = round(seconds, 3)
            self.save()
        return {k: _from_json(v) for k, v in self.state["results"][label].items()}

    def roles(self, skill: str) -> dict[str, SuiteRole]:
        roles: dict[str, SuiteRole] = {}
        admitted = {s for s, d in self.state["skills"].items() if d["status"] == "admitted"}
        for name, about in self.state["suites"].items():
            if about["role"] != "target":
                roles[name] = about["role"]
            elif about["skill"] == skill:
                roles[name] = "target"
            elif about["skill"] in admitted:
                roles[name] = "interference"
        return roles

    def run(self) -> dict[str, Any]:
        accepted: Items = [(str(a), float(w)) for a, w in self.state["accepted"]]
        if self.skills:
            self.routed_scores(accepted)
            faults.fault_point("evaluate:after_incumbent")
        for skill in self.skills:
            decided = self.state["skills"].get(skill)
            if decided is None:
                decided = self.decide(skill, accepted)
            self.tell_registry(skill, decided)
            if decided["status"] == "admitted":
                accepted = [(str(a), float(w)) for a, w in decided["stack"]]
        return self.state

    def decide(self, skill: str, accepted: Items) -> dict[str, Any]:
        """Judge each candidate of ``skill`` against ``accepted`` (verdicts saved one by one), then pick the winner."""
        base_seconds = self.state.get("stack_seconds", {}).get(stack_label(accepted), 0.0)
        verdicts: dict[str, Any] = self.state["candidates"].setdefault(skill, {})
        for generator, adapter in self.candidates[skill]:
            if generator in verdicts:
                continue
            if self.ctx.remaining() < base_seconds:
                verdicts[generator] = {"generator": generator, "adapter": adapter, "status": "skipped",
                                       "reasons": ["the run's time budget is spent"], "comparisons": [], "stack": [],
                                       "tried": []}  # fmt: skip
            else:
                verdicts[generator] = self.judge(skill, generator, adapter, accepted)
            self.save()
            faults.fault_point("evaluate:after_candidate")
        ordered = [verdicts[g] for g, _ in self.candidates[skill]]
        winner, why = pick_winner(ordered)
        if winner is not None:
            decided: dict[str, Any] = dict(winner)
        elif len(ordered) == 1:
            decided = dict(ordered[0])
        else:
            statuses = {v["status"] for v in ordered}
            decided = {"status": "rejected" if "rejected" in statuses else "skipped", "comparisons": [], "stack": [],
                       "baseline": stack_label(accepted), "weight": None,
                       "reasons": [f"{v['generator']}: {r}" for v in ordered for r in v["reasons"]]}  # fmt: skip
        decided.update(candidates=ordered, winner=winner["generator"] if winner else None, why=why)
        if len(ordered) > 1:
            self.ctx.say(f"evaluate: {skill}: " + (f"{winner['adapter']} ({winner['generator']}) wins: {why}"
                                                   if winner else why))  # fmt: skip
        self.state["skills"][skill] = decided
        if decided["status"] == "admitted":
            self.state["accepted"] = decided["stack"]
        self.save()
        faults.fault_point("evaluate:after_decision")
        return decided

    def judge(self, skill: str, generator: str, adapter: str, accepted: Items) -> dict[str, Any]:
        """One candidate's verdict: its version at each candidate weight in turn until the gate admits one."""
        base_seconds = self.state.get("stack_seconds", {}).get(stack_label(accepted), 0.0)
        tried: list[dict[str, Any]] = []
        verdict: dict[str, Any] = {}
        for weight in self.ctx.config.evaluation.candidate_weights:
            if tried and self.ctx.remaining() < base_seconds:
                break  # no time to score another weight: the last verdict stands
            candidate = _with(accepted, adapter, weight)
            scored, incumbent_scores = self.routed_scores(candidate), self.routed_scores(accepted)
            fired = self.fired(adapter, scored)
            decision = PairedGate(self.roles(skill), self.ctx.config.gate).decide(scored, incumbent_scores)
            verdict = {"generator": generator, "adapter": adapter, "status": decision.status,
                       "reasons": list(decision.reasons),
                       "comparisons": [c.model_dump() for c in SkillResult.deltas(decision)],
                       "stack": [list(i) for i in candidate], "baseline": stack_label(accepted),
                       "weight": weight}  # fmt: skip
            if fired is not None:
                verdict["routed"] = fired
            tried.append({"weight": weight, "status": decision.status, "reasons": list(decision.reasons)})
            shown = [r for r in decision.reasons if r.startswith("target")] if decision.admitted else \
                decision.reasons
            at = "" if weight == 1.0 else f" at weight {weight:g}"
            if fired is not None:
                shown = [*shown, "routed to " + ", ".join(f"{f['fired']}/{f['items']} {n}" for n, f in fired.items())]
            self.ctx.say(f"evaluate: {adapter}{at} {decision.status}: " + "; ".join(shown))
            if decision.admitted:
                break
        verdict["tried"] = tried
        return verdict

    def near(self, adapter: str) -> dict[str, dict[str, float]] | None:
        """Per suite and item id, ``adapter``'s router similarity to the item's question (None: not routed).
        Embedded once per adapter: each candidate weight and stack reuses it."""
        spec = self.ctx.runtime.routing(adapter)
        if spec is None:
            return None
        if adapter not in self._near:
            suites, _ = _suites(self.ctx, self.plan, self.live, self.skills)
            router = self.ctx.runtime.router
            near: dict[str, dict[str, float]] = {}
            sections: dict[str, dict[str, int]] = {}
            for s in suites:  # each suite's questions embedded once, for the similarity and the section
                sims, picks = router.match(adapter, spec, [i.question for i in s.items])
                near[s.name] = {i.id: float(sim) for i, sim in zip(s.items, sims, strict=True)}
                sections[s.name] = {i.id: int(k) for i, k in zip(s.items, picks, strict=True)}
            self._near[adapter] = near
            if spec.sections:
                self._section[adapter] = sections
        return self._near[adapter]

    def _served(self, adapter: str, suite: str, item: str) -> str:
        """The stack item ``adapter`` is on ``suite``'s item ``item`` where it applies: itself, or its section."""
        section = self._section.get(adapter, {}).get(suite, {}).get(item)
        return adapter if section is None else section_name(adapter, section)

    def fires(self, adapter: str) -> dict[str, set[str]] | None:
        """Per suite, the ids of the items ``adapter``'s router fires on (None: the adapter is not routed)."""
        near, spec = self.near(adapter), self.ctx.runtime.routing(adapter)
        if near is None or spec is None:
            return None
        return {suite: {i for i, sim in per.items() if sim >= spec.threshold} for suite, per in near.items()}

    def routed_scores(self, items: Items) -> dict[str, EvalResult]:
        """The scores of ``items`` as the runtime runs the stack: each item scored by the sub-stack that applies to
        its question (unrouted adapters always; routed ones by :func:`~agent_sleep.runtime.routing.applying`: where
        their router fires, and of a group only the closest). Without routed adapters this is :meth:`scores`."""
        routed = {a: near for a, _ in items if (near := self.near(a)) is not None}
        if not routed:
            return self.scores(items)
        specs = {a: self.ctx.runtime.routing(a) for a in routed}
        # suite -> item id -> the routed adapters applying to it (each as the section it serves there, if any)
        subs: dict[str, dict[str, frozenset[str]]] = {}
        for suite in sorted({name for per in routed.values() for name in per}):
            ids = sorted({i for per in routed.values() for i in per.get(suite, {})})
            for i in ids:
                on = applying({a: per[suite][i] for a, per in routed.items() if i in per.get(suite, {})}, specs)
                if on:
                    subs.setdefault(suite, {})[i] = frozenset(self._served(a, suite, i) for a in on)

        def sub_stack(firing: frozenset[str]) -> Items:
            served = {split_section(s)[0]: s for s in firing}
            return [(served.get(a, a), w) for a, w in items if a not in routed or a in served]

        firing_sets = {f for per in subs.values() for f in per.values()} | {frozenset()}
        results = {f: self.scores(sub_stack(f)) for f in sorted(firing_sets, key=lambda f: (len(f), sorted(f)))}
        out: dict[str, EvalResult] = {}
        for name, result in results[frozenset()].items():
            on = subs.get(name, {})
            scores = {i: results[on.get(i, frozenset())][name].scores.get(i, v) for i, v in result.scores.items()}
            out[name] = replace(result, stack=tuple(items), scores=scores)
        return out

    def fired(self, adapter: str, scored: dict[str, EvalResult]) -> dict[str, dict[str, int]] | None:
        """Per suite, on how many items ``adapter``'s router fired (None: the adapter is not routed)."""
        fires = self.fires(adapter)
        if fires is None:
            return None
        return {name: {"fired": sum(1 for i in r.scores if i in fires.get(name, set())), "items": len(r.scores)}
                for name, r in scored.items() if r.scores}  # fmt: skip

    def _verdicts(self, skill: str, decided: dict[str, Any]) -> list[dict[str, Any]]:
        """Each candidate's verdict (a decision saved before candidates existed is its one candidate's)."""
        if "candidates" in decided:
            return list(decided["candidates"])
        generator, adapter = self.candidates[skill][0]
        return [{**decided, "generator": generator, "adapter": adapter}]

    def tell_registry(self, skill: str, decided: dict[str, Any]) -> None:
        """Store the probes and the gate's verdict with each judged version; reject those the gate did (once)."""
        registry = self.ctx.registry
        probes = [{"question": p.question, "answer": p.answer, **({"system": p.system} if p.system else {})}
                  for p in self.plan.skill(skill).probes]
        verdicts = self._verdicts(skill, decided)
        winner = next((v["adapter"] for v in verdicts if v["generator"] == decided.get("winner")), None)
        for v in verdicts:
            if v["status"] not in ("admitted", "rejected"):
                continue
            adapter = v["adapter"]
            gate = {"run": self.ctx.run_id, "status": v["status"], "reasons": v["reasons"],
                    "comparisons": v["comparisons"], "baseline": v.get("baseline")}  # fmt: skip
            if len(verdicts) > 1:
                gate.update(generator=v["generator"], chosen=adapter == winner, winner=winner, why=decided.get("why"))
            registry.record_eval(adapter, {"probes": probes, "gate": gate})
            if v["status"] == "rejected" and registry.get(adapter).status != "rejected":
                p = self.ctx.config.gate
                target = next((c["delta"] for c in v["comparisons"] if c["role"] == "target"), None)
                rejection = Rejection(check="gate", kind="policy", base_model_hash=self.ctx.runtime.handle.content_hash,
                                      policy={"min_target_gain": p.min_target_gain, "max_guard_loss": p.max_guard_loss,
                                              "max_interference_loss": p.max_interference_loss,
                                              "confidence": p.confidence}, value=target)  # fmt: skip
                reason = f"rejected by the gate of run {self.ctx.run_id}: " + "; ".join(v["reasons"])
                registry.reject(adapter, reason, rejection, actor="consolidation")


def evaluate(ctx: RunContext, plan: ConsolidationPlan, generated: dict[str, Any], progress: dict[str, Any]
             ) -> dict[str, Any]:  # fmt: skip
    """Gate each generated skill (see the module docstring); ``progress`` is what an earlier attempt saved."""
    return _Evaluation(ctx, plan, generated, dict(progress)).run()

