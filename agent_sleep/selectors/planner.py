"""From the experience store to a consolidation plan: stream candidates, run the chain, assign skills.

:func:`build_plan` reads an agent's new or changed documents, then its unconsolidated episodes in
batches (:mod:`agent_sleep.selectors.source`), runs each batch through the selector chain
(:mod:`agent_sleep.selectors.chain`), and puts what comes out into skills
(:mod:`agent_sleep.selectors.skills`) and held-out probes (:mod:`agent_sleep.selectors.probes`).
Memory holds one batch, the selectors' state (bounded by ``budget``) and the decisions; never the
whole store.

It returns the plan and one :class:`ItemDecision` per item per selector that dropped or changed it,
plus the planner's final decision for every item it placed (``skill`` and ``role``: ``train`` or
``probe``) or could not place, and one per feedback instruction (item kind ``feedback``, role
``instruction``) saying which skill's description it went into, or why not.

Instructions (``agent-sleep feedback --instruction``): those of every episode the chain handed on,
oldest first, the same text (ignoring case, spacing and a final full stop) used once, become the lines
of the dialog skill's description, after a declared one. An episode whose feedback gives an
instruction is never held out as a probe (t2l trains on the description); one the chain handed on for
its instruction only (``instruction_only``) is neither trained on nor probed. A declared ``t2l`` skill
is tested on copies of the dialog skill's probes. It writes nothing: the caller stores the decisions and marks what was
consolidated. No signal is an empty plan (``plan.empty``), never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from agent_sleep.interfaces import ExperienceReader
from agent_sleep.errors import ConfigError
from agent_sleep.key_terms import term_set
from agent_sleep.names import check_agent_name, check_skill_name
from agent_sleep.selectors.base import SelectorContext
from agent_sleep.selectors.candidates import Candidate, DocumentCandidate, EpisodeCandidate
from agent_sleep.selectors.chain import Chain, ItemDecision
from agent_sleep.selectors.config import SelectionConfig
from agent_sleep.selectors.plan import ConsolidationPlan, PlannedConversation, PlannedInstruction, PlannedProbe
from agent_sleep.selectors.probes import (
    best_document_skill,
    document_probes,
    episode_probe,
    held_out_taught,
    probe_hash,
    taught_by,
)
from agent_sleep.selectors.skills import SkillDraft, assign_documents, words
from agent_sleep.selectors.source import consolidated_references, document_candidates, episode_candidates

__all__ = ["ItemDecision", "PlanResult", "build_plan"]

PLANNER = "planner"
REFERENCE_WINDOW = timedelta(days=90)  # novelty compares with what was consolidated this long before now


@dataclass(frozen=True)
class PlanResult:
    """The plan, and every decision to store (``selection_decisions`` rows, in the order they were made)."""

    plan: ConsolidationPlan
    decisions: tuple[ItemDecision, ...]


def build_plan(reader: ExperienceReader, agent: str, config: SelectionConfig | None = None, *,
               now: datetime | None = None, reference_texts: Sequence[str | tuple[str, str]] | None = None,
               progress: bool = False) -> PlanResult:  # fmt: skip
    """The consolidation plan for ``agent``'s unconsolidated experiences in ``reader``.

    ``now``: the time the run treats as now (recency windows; default: the current time).
    ``reference_texts``: texts (or ``(id, text)`` pairs) already consolidated, for the novelty selector;
    default: :func:`~agent_sleep.selectors.source.consolidated_references` when the chain has ``novelty``. ``progress``: a
    progress bar on stderr while episodes are read.
    """
    check_agent_name(agent)
    config = config or SelectionConfig()
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:  # naive means UTC, as everywhere in the store
        now = now.replace(tzinfo=timezone.utc)
    if reference_texts is None and any(spec.name == "novelty" for spec in config.chain):
        reference_texts = consolidated_references(reader, agent, since=now - REFERENCE_WINDOW)
    chain = Chain(config.build_chain(SelectorContext(agent, now, tuple(reference_texts or ()), reader)))
    out: list[Candidate] = list(chain.feed(document_candidates(reader, agent)))
    bar = _progress_bar(progress)
    try:
        for batch in episode_candidates(reader, agent, batch_size=config.batch_size):
            out += chain.feed(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    out += chain.finish()
    documents = [c for c in out if isinstance(c, DocumentCandidate)]
    episodes = sorted((c for c in out if isinstance(c, EpisodeCandidate)), key=lambda e: (e.started_at, e.id))
    return _Planner(agent, config, chain).plan(documents, episodes)


def _progress_bar(on: bool):  # type: ignore[no-untyped-def]
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="selecting", unit=" episodes")


class _Planner:
    """Puts the chain's output into skills and probes, with a final decision for every item."""

    def __init__(self, agent: str, config: SelectionConfig, chain: Chain) -> None:
        self.agent, self.config, self.chain = agent, config, chain
        self.decisions: list[ItemDecision] = list(chain.decisions)
        self.kept = self.dropped = 0

    def plan(self, documents: list[DocumentCandidate], episodes: list[EpisodeCandidate]) -> PlanResult:
        dialog = self._dialog()
        described = {s.skill_name(self.agent) for s in self.config.skills.declared if s.generator == "t2l"}
        reserved = frozenset(described | ({dialog.skill} if dialog else set()))
        drafts, unassigned = assign_documents(self.agent, self.config.skills, documents, reserved=reserved)
        for doc in unassigned:
            self._drop("document", doc.id, "no skill takes it: no declared skill's globs match its source and "
                                           "skills.per_document is off")  # fmt: skip
        by_id = {d.id: d for d in documents}
        for draft in drafts.values():
            for d in draft.documents:
                probes, bad = document_probes(by_id[d.id])
                draft.probes += probes
                note = f" ({len(probes)} probe(s) from meta['probes']" if probes or bad else ""
                note += f"; {bad} entries that are not question/answer texts left out)" if bad else ")" if note else ""
                self._keep("document", d.id, f"planned: trains {draft.generator} skill {draft.skill}{note}",
                           draft.skill, "train")
        self._instructions(dialog, episodes)
        self._episodes(drafts, dialog, episodes)
        self._described(drafts, dialog)
        skills = tuple(d.plan() for d in drafts.values() if d.used)
        stats = {**self.chain.stats, PLANNER: {"kept": self.kept, "dropped": self.dropped}}
        plan = ConsolidationPlan(
            agent=self.agent, skills=skills, stats=stats,
            episodes=tuple(sorted({c.episode_id for s in skills for c in s.conversations}
                                  | {p.source_id for s in skills for p in s.probes if p.source_kind == "episode"}
                                  | {e for s in skills for e in s.instruction_episodes})),
            documents=tuple(d.id for s in skills for d in s.documents),
        ).check()  # fmt: skip
        return PlanResult(plan, tuple(self.decisions))

    def _dialog(self) -> SkillDraft | None:
        """The sft skill of the kept conversations: the declared one, else ``skills.dialog`` (None: none)."""
        skills_cfg = self.config.skills
        sft = next((s for s in skills_cfg.declared if s.generator == "sft"), None)
        if sft is not None:
            return SkillDraft(sft.skill_name(self.agent), "sft", sft.description, declared_candidates=sft.tried)
        if skills_cfg.dialog is None:
            return None
        name = check_skill_name(skills_cfg.dialog.format(agent=self.agent), error=ConfigError)
        return SkillDraft(name, "sft")  # described only by feedback instructions, if any

    def _instructions(self, dialog: SkillDraft | None, episodes: list[EpisodeCandidate]) -> None:
        """The instructions of the kept feedback into ``dialog``'s description, each use a decision."""
        given = sorted(((f, ep.id) for ep in episodes for f in ep.instructions),
                       key=lambda pair: (pair[0].created_at, pair[0].id))  # fmt: skip
        first: dict[str, str] = {}
        for f, episode in given:
            text = str(f.instruction).strip()
            if dialog is None:
                self._drop("feedback", f.id, "instruction not used: no skill takes instructions (skills.dialog is "
                                             "null and no sft skill is declared)")  # fmt: skip
                continue
            key = " ".join(text.split()).rstrip(".!").casefold()
            if key in first:
                self._keep("feedback", f.id, f"instruction of episode {episode}: the same as feedback {first[key]}'s, "
                                             f"used once in the description of skill {dialog.skill}",
                           dialog.skill, "instruction")  # fmt: skip
                continue
            first[key] = f.id
            dialog.instructions.append(PlannedInstruction(feedback_id=f.id, episode_id=episode, text=text))
            self._keep("feedback", f.id, f"instruction of episode {episode}: line {len(dialog.instructions)} of the "
                                         f"description of skill {dialog.skill} (t2l's material)",
                       dialog.skill, "instruction")  # fmt: skip

    def _described(self, drafts: dict[str, SkillDraft], dialog: SkillDraft | None) -> None:
        """Declared t2l skills: their description, tested on copies of the dialog skill's probes."""
        for spec in self.config.skills.declared:
            if spec.generator != "t2l":
                continue
            name = spec.skill_name(self.agent)
            draft = drafts[name] = SkillDraft(name, "t2l", spec.description, declared_candidates=spec.tried)
            if dialog is None or dialog.skill not in drafts:
                continue
            for probe in dialog.probes:
                if probe.source_kind == "episode":
                    draft.probes.append(probe)
                    self._keep("episode", probe.source_id, f"also a held-out probe of t2l skill {name} (a described "
                                                           f"skill is tested on {dialog.skill}'s probes)",
                               name, "probe")  # fmt: skip

    def _episodes(self, drafts: dict[str, SkillDraft], dialog: SkillDraft | None,
                  episodes: list[EpisodeCandidate]) -> None:
        cfg = self.config.probes
        for ep in episodes:
            if ep.instruction_only is not None:
                why = "its feedback's instruction is used" if dialog is not None else "no skill takes instructions"
                self._drop("episode", ep.id, f"conversation not used ({ep.instruction_only}); {why}")
        episodes = [ep for ep in episodes if ep.instruction_only is None]
        doc_terms: set[str] = set()  # what teaches besides conversations: documents and descriptions (t2l)
        for draft in drafts.values():
            for d in draft.documents:
                doc_terms |= term_set(d.text)
        if dialog is not None:
            doc_terms |= term_set(dialog.full_description)
        for spec in self.config.skills.declared:
            if spec.generator == "t2l":
                doc_terms |= term_set(spec.description)
        probes, not_held = self._probes(episodes, doc_terms)
        doc_words = {name: set().union(*(words(d.text) for d in draft.documents))
                     for name, draft in drafts.items() if draft.generator in ("d2l", "gradient_cd") and draft.documents}
        placed: list[tuple[EpisodeCandidate, SkillDraft, PlannedProbe | None, str]] = []  # (episode, skill, probe, why)
        for ep in episodes:
            probe = probes.get(ep.id)
            if probe is not None:
                skill, share = best_document_skill(probe.answer, doc_words, cfg.min_answer_overlap)
                where = f"its documents hold {share:.0%} of the answer's words" if skill else \
                    f"no skill's documents hold {cfg.min_answer_overlap:.0%} of the answer's words"
                h = probe_hash(ep.id)
                why = (f"hash {h:.3f} < {cfg.fraction:g}" if h < cfg.fraction else
                       "in place of one that nothing else teaches" if not_held else "at least one of 2+ is held out")
                target = drafts[skill] if skill else dialog
                if target is not None:
                    placed.append((ep, target, probe, f"{why}; {where}"))
                    continue
            problem = self._not_trainable(ep, dialog)
            if problem:
                self._drop("episode", ep.id, problem)
            else:
                assert dialog is not None
                placed.append((ep, dialog, None, not_held.get(ep.id, "")))
        if dialog is not None and not dialog.full_description and not any(p is None for _, s, p, _ in placed
                                                                          if s is dialog):
            # nothing else trains the dialog skill: its probes would test a skill that is not made; train on them
            # (with a description, t2l makes it from that alone: the probes stay held out)
            placed = [(ep, s, None, "the only conversations: trained on, not held out")
                      if s is dialog and not self._not_trainable(ep, dialog) else (ep, s, p, why)
                      for ep, s, p, why in placed]  # fmt: skip
        # A fact corrected in conversations is taught by the dialog skill too when it trains on another
        # correction of it, so such a held-out correction that a document covers tests both skills.
        lessons = [_final_text(ep) for ep, s, p, _ in placed if s is dialog and p is None]
        for ep, skill, probe, why in placed:
            if probe is not None:
                skill.probes.append(probe)
                if lessons and skill is not dialog and probe.origin == "correction" and taught_by(probe, lessons):
                    assert dialog is not None
                    dialog.probes.append(probe)
                    why += f"; also a probe of {dialog.skill}"
                self._keep("episode", ep.id, f"planned: held out as a {probe.origin} probe of skill {skill.skill} "
                                             f"({why})", skill.skill, "probe")
                continue
            skill.conversations.append(PlannedConversation(episode_id=ep.id, messages=ep.messages,
                                                           corrected=ep.corrected_by is not None))
            note = ", ".join(n for n in ("corrected" if ep.corrected_by else "", why) if n)
            self._keep("episode", ep.id, f"planned: trains sft skill {skill.skill}" + (f" ({note})" if note else ""),
                       skill.skill, "train")
        if dialog is not None:
            drafts[dialog.skill] = dialog

    @staticmethod
    def _not_trainable(ep: EpisodeCandidate, dialog: SkillDraft | None) -> str | None:
        """Why ``ep`` cannot be a training conversation (None: it can)."""
        if dialog is None:
            return "conversations are not used: skills.dialog is null and no sft skill is declared"
        if ep.corrections and ep.corrected_by is None:
            return "has a correction, but the chain has no 'corrections' step: its wrong answer is not trained on"
        if len(ep.messages) < 2:
            return f"{len(ep.messages)} message(s): a conversation needs at least 2"
        return None

    def _probes(self, episodes: Iterable[EpisodeCandidate], doc_terms: set[str]
                ) -> tuple[dict[str, PlannedProbe], dict[str, str]]:  # fmt: skip
        """The probe of every episode held out (corrected ones, then, if on, confirmed ones), and why each
        episode the hash picked but nothing else teaches was not held out."""
        cfg = self.config.probes
        corrected, confirmed, teachers = {}, {}, {}
        for ep in episodes:
            if ep.final_answer() is not None:
                teachers[ep.id] = _final_text(ep)
            if ep.instructions:  # its instruction is in a description t2l trains on: never a probe
                continue
            if ep.corrected_by is not None:
                probe = episode_probe(ep, "correction")
                if probe is not None:
                    corrected[ep.id] = probe
            elif cfg.from_feedback and ep.mean_score is not None and ep.mean_score >= cfg.confirm_min_score:
                probe = episode_probe(ep, "feedback")
                if probe is not None:
                    confirmed[ep.id] = probe
        held, not_held = held_out_taught(corrected, cfg.fraction, at_least_one=True, teachers=teachers,
                                         taught_elsewhere=doc_terms)  # fmt: skip
        held_confirmed, skipped = held_out_taught(
            confirmed, cfg.fraction, at_least_one=False, taught_elsewhere=doc_terms,
            teachers={i: t for i, t in teachers.items() if i not in held})  # fmt: skip
        held |= held_confirmed
        not_held.update(skipped)
        return {i: p for pool in (corrected, confirmed) for i, p in pool.items() if i in held}, not_held

    def _keep(self, kind: str, item: str, reason: str, skill: str, role: str) -> None:  # role: train|probe|instruction
        self.kept += 1
        self.decisions.append(ItemDecision(kind, item, PLANNER, True, reason, skill, role))  # type: ignore[arg-type]

    def _drop(self, kind: str, item: str, reason: str) -> None:
        self.dropped += 1
        self.decisions.append(ItemDecision(kind, item, PLANNER, False, reason))  # type: ignore[arg-type]


def _final_text(ep: EpisodeCandidate) -> str:
    """The final answer ``ep`` trains on ("" when it has none)."""
    index = ep.final_answer()
    return "" if index is None else str(ep.messages[index].get("content") or "")
