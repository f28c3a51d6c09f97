"""Signal selection: from the experience store to a consolidation plan per skill (see :mod:`.plan`).

:func:`build_plan` streams an agent's unconsolidated episodes and new documents through a chain of
selectors named in a :class:`SelectionConfig` (:func:`load_selection_config` reads one from YAML) and
returns the plan with every decision. Selectors by name: :mod:`.registry`.
"""

from agent_sleep.selectors.chain import ItemDecision
from agent_sleep.selectors.config import SelectionConfig, load_selection_config, parse_selection_config
from agent_sleep.selectors.plan import (
    ConsolidationPlan,
    PlannedConversation,
    PlannedDocument,
    PlannedProbe,
    SkillPlan,
)
from agent_sleep.selectors.planner import PlanResult, build_plan

__all__ = [
    "ConsolidationPlan", "ItemDecision", "PlanResult", "PlannedConversation", "PlannedDocument", "PlannedProbe",
    "SelectionConfig", "SkillPlan", "build_plan", "load_selection_config", "parse_selection_config",
]  # fmt: skip
