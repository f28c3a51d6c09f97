"""Which skill learns what: documents to ``d2l`` skills, conversations (and feedback instructions) to the
``sft`` skill, a declared ``t2l`` skill its description.

A document goes to the first declared skill whose globs match its source; otherwise, with
``per_document`` on, to a skill of its own named ``{agent}-{slug}`` (the slug is the source's path
without its extension, lowercased, every run of other characters one ``-``: ``kb/Returns.md`` ->
``kb-returns``). The name of a source is the same in every run, so each new version of a document
trains the next version of the same skill. A name longer than 64 characters, or one two sources of
the same plan would share, ends in ``-`` and 6 hex digits of the source's hash instead.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from agent_sleep.names import MAX_NAME_LENGTH
from agent_sleep.selectors.candidates import DocumentCandidate
from agent_sleep.selectors.config import SkillsConfig
from agent_sleep.selectors.plan import PlannedConversation, PlannedDocument, PlannedInstruction, PlannedProbe, SkillPlan

__all__ = ["SkillDraft", "assign_documents", "document_skill_name", "words"]

_WORD = re.compile(r"\w+")


@dataclass
class SkillDraft:
    """A skill's material while the plan is being put together. ``declared_candidates``: the generators a
    user named for it (None: :meth:`candidates` applies the default rule)."""

    skill: str
    generator: str
    description: str = ""
    documents: list[PlannedDocument] = field(default_factory=list)
    conversations: list[PlannedConversation] = field(default_factory=list)
    probes: list[PlannedProbe] = field(default_factory=list)
    instructions: list[PlannedInstruction] = field(default_factory=list)
    declared_candidates: tuple[str, ...] | None = None

    @property
    def full_description(self) -> str:
        """The declared description, then each instruction, one a line."""
        return "\n".join(t for t in (self.description.strip(), *(i.text for i in self.instructions)) if t)

    def candidates(self) -> tuple[str, ...]:
        """The generators to try, first the one that leads: the declared ones the material can feed, else
        ``(sft, t2l)`` for conversations and a description, ``(t2l,)`` for a description alone, else
        ``(generator,)``."""
        described = bool(self.full_description)
        if self.declared_candidates is not None:
            feeds = {"sft": bool(self.conversations), "t2l": described, "d2l": bool(self.documents),
                     "gradient_cd": bool(self.documents)}  # fmt: skip
            usable = tuple(c for c in self.declared_candidates if feeds.get(c, True))
            return usable or self.declared_candidates
        if described and self.conversations and not self.documents:
            return ("sft", "t2l")
        if described and not self.conversations and not self.documents:
            return ("t2l",)
        return (self.generator,)

    def plan(self) -> SkillPlan:
        candidates = self.candidates()
        return SkillPlan(skill=self.skill, generator=candidates[0], description=self.full_description,
                         documents=tuple(self.documents), conversations=tuple(self.conversations),
                         probes=tuple(self.probes), instructions=tuple(self.instructions),
                         candidates=candidates if len(candidates) > 1 else ())  # fmt: skip

    @property
    def used(self) -> bool:
        return bool(self.documents or self.conversations or self.probes or self.instructions)


def _slug(source: str) -> str:
    path = PurePosixPath(source.split("://", 1)[-1].replace("\\", "/"))
    stem = str(path.with_suffix("")) if path.suffix and len(path.suffix) <= 6 else str(path)
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "doc"


def _hashed(name: str, source: str) -> str:
    tag = hashlib.sha1(source.encode("utf-8")).hexdigest()[:6]
    return f"{name[: MAX_NAME_LENGTH - 7].rstrip('-._')}-{tag}"


def document_skill_name(agent: str, source: str) -> str:
    """``{agent}-{slug}`` for a document source (hashed when longer than a name may be)."""
    name = f"{agent}-{_slug(source)}"
    return name if len(name) <= MAX_NAME_LENGTH else _hashed(name, source)


def assign_documents(agent: str, config: SkillsConfig, documents: list[DocumentCandidate], *,
                     reserved: frozenset[str] = frozenset()) -> tuple[dict[str, SkillDraft], list[DocumentCandidate]]:
    """Skill drafts holding the documents, and the documents no skill takes (``reserved``: names other
    skills of the plan have; a document skill of the same name is hashed)."""
    drafts: dict[str, SkillDraft] = {}
    declared = [(s, s.skill_name(agent)) for s in config.declared if s.documents]
    own: dict[str, list[DocumentCandidate]] = {}
    unassigned = []
    for doc in documents:
        spec = next(((s, n) for s, n in declared if any(fnmatch.fnmatchcase(doc.source, g) for g in s.documents)), None)
        if spec is not None:
            draft = drafts.setdefault(spec[1], SkillDraft(spec[1], spec[0].generator, spec[0].description,
                                                          declared_candidates=spec[0].tried))
            draft.documents.append(_planned(doc))
        elif config.per_document:
            own.setdefault(document_skill_name(agent, doc.source), []).append(doc)
        else:
            unassigned.append(doc)
    for name, docs in own.items():
        shared = len({d.source for d in docs}) > 1 or name in drafts or name in reserved
        for doc in docs:
            skill = _hashed(name, doc.source) if shared else name
            title = f"{doc.title} ({doc.source})" if doc.title else doc.source
            draft = drafts.setdefault(skill, SkillDraft(skill, "d2l", f"Knowledge from {title}, version {doc.version}"))
            draft.documents.append(_planned(doc))
    return drafts, unassigned


def _planned(doc: DocumentCandidate) -> PlannedDocument:
    return PlannedDocument(id=doc.id, source=doc.source, version=doc.version, title=doc.title, text=doc.text)


def words(text: str) -> set[str]:
    """The words of ``text`` that carry meaning (three letters or more), lowercased; all words if none is."""
    found = _WORD.findall(text.lower())
    long = {w for w in found if len(w) >= 3}
    return long or set(found)
