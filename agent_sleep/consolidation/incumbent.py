"""What is live for the agent when a run starts: the stack, and the held-out probes of each live skill.

A run stores each skill's probes with its adapter version (``eval_summary["probes"]``), so a later
run can check that a new candidate keeps every live skill working (the gate's ``interference``
suites) and the selectors can tell new material from what the agent already knows. An adapter
deployed by hand has no probes: nothing checks it for interference.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_sleep.registry import AdapterRegistry
from agent_sleep.registry.refs import parse_adapter_ref

__all__ = ["Incumbent", "LiveSkill", "incumbent"]


@dataclass(frozen=True)
class LiveSkill:
    skill: str
    adapter: str  # skill@vN
    weight: float
    probes: tuple[tuple[str, str, str | None], ...]  # (question, answer, system prompt it is asked under)


@dataclass(frozen=True)
class Incumbent:
    """The agent's live deployment (``seq`` 0 and no stack: the base model) and its skills."""

    seq: int
    stack: str | None
    skills: tuple[LiveSkill, ...]

    @property
    def items(self) -> list[tuple[str, float]]:
        return [(s.adapter, s.weight) for s in self.skills]

    @property
    def reference_texts(self) -> list[str]:
        """Each live probe as ``question\\nanswer``: what the agent is known to have learned."""
        return [f"{p[0]}\n{p[1]}" for s in self.skills for p in s.probes]

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "stack": self.stack,
                "skills": [{"skill": s.skill, "adapter": s.adapter, "weight": s.weight,
                            "probes": [list(p) for p in s.probes]} for s in self.skills]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Incumbent:
        skills = tuple(LiveSkill(skill=s["skill"], adapter=s["adapter"], weight=float(s["weight"]),
                                 probes=tuple(_probe(*p) for p in s["probes"]))
                       for s in data["skills"])  # type: ignore[attr-defined]  # fmt: skip
        return cls(seq=int(data["seq"]), stack=data.get("stack"), skills=skills)  # type: ignore[call-overload,arg-type]


def incumbent(registry: AdapterRegistry, agent: str) -> Incumbent:
    """What is live for ``agent`` now, with each live version's stored probes."""
    live = registry.live(agent)
    if live is None:
        return Incumbent(seq=0, stack=None, skills=())
    skills = []
    for item in live.stack.items:
        rec = registry.get(item.adapter)
        raw = (rec.eval_summary or {}).get("probes") or []
        probes = tuple(_probe(p["question"], p["answer"], p.get("system")) for p in raw
                       if isinstance(p, dict) and p.get("question") and p.get("answer"))  # fmt: skip
        skills.append(LiveSkill(skill=parse_adapter_ref(rec.name).skill, adapter=rec.name, weight=item.weight,
                                probes=probes))  # fmt: skip
    return Incumbent(seq=live.seq, stack=live.stack.name, skills=tuple(skills))


def _probe(question: object, answer: object, system: object = None) -> tuple[str, str, str | None]:
    """A stored probe (runs before the system prompt was kept stored two fields)."""
    return str(question), str(answer), (str(system) if system else None)
