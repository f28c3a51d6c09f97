"""Finding the version a generator made before from the same input (``sources.reuse_key``), instead of a copy.

``internalize`` (D2L) and ``skill create`` (T2L) hash everything that decides their adapter into a reuse key,
store it in the version's sources, and look here before generating again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from agent_sleep.errors import AdapterError

if TYPE_CHECKING:
    from agent_sleep.adapters.artifact import AdapterArtifact
    from agent_sleep.registry.records import AdapterVersionRecord
    from agent_sleep.registry.registry import AdapterRegistry

__all__ = ["reusable_versions"]


def reusable_versions(registry: AdapterRegistry, skill: str, generator: str,
                      key: str) -> Iterator[tuple[AdapterVersionRecord, AdapterArtifact]]:  # fmt: skip
    """Versions of ``skill`` that ``generator`` registered with reuse ``key``, newest first, with their folder read
    back; a version whose folder is missing or damaged here is passed over."""
    from agent_sleep.adapters.artifact import read_adapter

    for record in reversed(registry.adapters(skill=skill)):
        if record.generator != generator or record.sources.get("reuse_key") != key:
            continue
        try:
            artifact = read_adapter(record.path)
        except AdapterError:
            continue
        yield record, artifact
