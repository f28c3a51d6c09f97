"""What every adapter generator returns: a LoRA in memory, ready to be written as a PEFT folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["GeneratedAdapter"]


@dataclass(frozen=True, eq=False)
class GeneratedAdapter:
    """PEFT-keyed CPU ``tensors``, the ``adapter_config`` (``lora_config``) to save them with, how many document
    chunks went in, the total rank and the wall-clock ``seconds`` it took to generate."""

    tensors: dict[str, Tensor]
    lora_config: dict[str, Any]
    chunks: int
    rank: int
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
