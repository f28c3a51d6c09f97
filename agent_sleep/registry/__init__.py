"""Adapter registry: versioned adapters (``skill@vN``), aliases, stacks and deployments in SQL."""

from agent_sleep.registry.records import AdapterVersionRecord, DeploymentRecord, StackItem, StackRecord
from agent_sleep.registry.registry import AdapterRegistry

__all__ = ["AdapterRegistry", "AdapterVersionRecord", "DeploymentRecord", "StackItem", "StackRecord"]
