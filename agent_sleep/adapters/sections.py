"""Routed sections of an adapter: slices of its rank that each answer their own requests.

A :class:`~agent_sleep.adapters.manifest.RoutingSpec` with ``sections`` (a long document's ``d2l`` adapter: one
section per chunk) is served one section at a time: the rows of the section a request goes to plus the rows no
section claims (the bias block). :func:`section_layers` cuts those rows out of an adapter's layers; the runtime
routes (:mod:`agent_sleep.runtime.routing`), validation bounds each section as served
(:mod:`agent_sleep.adapters.validation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from agent_sleep.adapters.artifact import LoraWeights
from agent_sleep.adapters.manifest import RoutingSpec
from agent_sleep.errors import AdapterFormatError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["section_layers"]


def section_layers(layers: Mapping[str, LoraWeights], spec: RoutingSpec, section: int,
                   adapter: str = "adapter") -> dict[str, LoraWeights]:  # fmt: skip
    """``layers`` cut to section ``section``'s rank rows plus the rows no section claims (same scaling: the delta
    is the sum of the kept rows' terms). AdapterFormatError for a section that does not exist or does not fit."""
    import torch

    if not 0 <= section < len(spec.sections):
        raise AdapterFormatError(f"{adapter} has {len(spec.sections)} routed sections, not a section {section}")
    reach = max(s.stop for s in spec.sections)
    rows_of: dict[int, Tensor] = {}  # per rank (modules may differ): the rows kept
    out = {}
    for module, w in layers.items():
        if reach > w.rank:
            raise AdapterFormatError(f"{adapter}: routed sections reach rank row {reach} but {module} has rank "
                                     f"{w.rank}")  # fmt: skip
        if w.rank not in rows_of:
            keep = torch.ones(w.rank, dtype=torch.bool)
            for s in spec.sections:
                keep[s.start : s.stop] = False
            keep[spec.sections[section].start : spec.sections[section].stop] = True
            rows_of[w.rank] = keep.nonzero().squeeze(1)
        rows = rows_of[w.rank]
        out[module] = LoraWeights(A=w.A.index_select(0, rows), B=w.B.index_select(1, rows), scaling=w.scaling)
    return out
