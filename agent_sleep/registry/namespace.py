"""Who owns a name in the registry, and what to say when a name owns nothing.

Agents and skills share one namespace: a request's model name ``refunds`` must
mean one thing, so a name is an agent's or a skill's, never both, and neither
may be the base model's name. The registry checks this when a name is first
used in it: a skill's first adapter version, an agent's first stack (or the
agent row a registration creates). Names that were already in use before stay
usable. The name *form* is :mod:`agent_sleep.names`'s rule; this module only
decides who may take a valid name, and phrases the "did you mean" for lookups
that find nothing. It works inside the caller's session and never commits.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent_sleep.errors import InvalidInputError
from agent_sleep.names import check_agent_name, check_skill_name, did_you_mean
from agent_sleep.registry.refs import AdapterRef, StackRef
from agent_sleep.store.models import Agent, AdapterVersion, Skill, Stack

__all__ = ["claim_agent", "claim_skill", "missing_adapter", "missing_stack"]


def _reserved(name: str, base_model: str | None) -> None:
    if base_model is not None and name.lower() == base_model.strip().lower():
        raise InvalidInputError(f"{name!r} is the base model's name; agents and skills need other names")


def claim_agent(s: Session, agent: str, *, base_model: str | None = None) -> None:
    """Check that ``agent`` may be an agent: a valid name, not a skill's (checked until it has a stack)."""
    check_agent_name(agent)
    if s.execute(select(Stack.id).where(Stack.agent == agent).limit(1)).first() is not None:
        return  # in use as an agent already
    _reserved(agent, base_model)
    if s.get(Skill, agent) is not None:
        raise InvalidInputError(f"{agent!r} already names a skill; an agent and a skill cannot share a name, "
                                "so pick another agent name")


def claim_skill(s: Session, skill: str, *, base_model: str | None = None) -> None:
    """Check that ``skill`` may be a skill: a valid name, not an agent's (checked until it has a version)."""
    check_skill_name(skill)
    if s.execute(select(AdapterVersion.id).where(AdapterVersion.skill == skill).limit(1)).first() is not None:
        return  # in use as a skill already
    _reserved(skill, base_model)
    if s.get(Agent, skill) is not None:
        raise InvalidInputError(f"{skill!r} already names an agent; an agent and a skill cannot share a name, "
                                "so pick another skill name")


def missing_adapter(s: Session, ref: AdapterRef) -> str:
    """Why ``ref`` names no adapter: the versions its skill has, or the skills it may have meant."""
    versions = list(s.execute(select(AdapterVersion.version).where(AdapterVersion.skill == ref.skill)
                              .order_by(AdapterVersion.version)).scalars())
    message = f"no adapter {str(ref)!r} in the registry"
    if versions:
        return f"{message}; {ref.skill} has {', '.join(f'v{v}' for v in versions)}"
    skills = s.execute(select(AdapterVersion.skill).distinct()).scalars()
    return message + did_you_mean(ref.skill, skills)


def missing_stack(s: Session, ref: StackRef | str) -> str:
    """Why ``ref`` names no stack: the versions its agent has, or the stacks it may have meant."""
    message = f"no stack {str(ref)!r} (stacks are named agent:stack@vN)"
    if isinstance(ref, StackRef):
        versions = list(s.execute(select(Stack.version).where(Stack.agent == ref.agent)
                                  .order_by(Stack.version)).scalars())
        if versions:
            return f"{message}; {ref.agent} has {', '.join(f'v{v}' for v in versions)}"
    return message + did_you_mean(str(ref), s.execute(select(Stack.name)).scalars())
