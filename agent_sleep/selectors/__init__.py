"""Signal selection: from the experience store to a consolidation plan per skill (see :mod:`.plan`)."""

from agent_sleep.selectors.plan import (
    ConsolidationPlan,
    PlannedConversation,
    PlannedDocument,
    PlannedProbe,
    SkillPlan,
)

__all__ = ["ConsolidationPlan", "PlannedConversation", "PlannedDocument", "PlannedProbe", "SkillPlan"]
