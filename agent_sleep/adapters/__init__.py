"""LoRA adapters: the on-disk format, runtime stacks, offline merges and pre-deploy validation.

* :mod:`~agent_sleep.adapters.artifact` - PEFT folders plus ``manifest.json``, written atomically, read safely.
* :mod:`~agent_sleep.adapters.stack` - weighted stacks applied by forward hooks, per context (hot-swap).
* :mod:`~agent_sleep.adapters.merge` - exact (cat) and lossy (linear, TIES) merges into one adapter.
* :mod:`~agent_sleep.adapters.validation` - checks that decide whether an adapter may go live.

Importing this package does not import torch, safetensors or peft.
"""

from __future__ import annotations

from agent_sleep.adapters.artifact import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterArtifact,
    LoraWeights,
    lora_layers,
    read_adapter,
    save_peft_adapter,
    write_adapter,
)
from agent_sleep.adapters.lora_config import peft_key, peft_lora_config
from agent_sleep.adapters.manifest import AdapterManifest, AdapterSources, BaseModelRef, GeneratorInfo, check_name
from agent_sleep.adapters.merge import materialize_cat, merge_linear, merge_ties
from agent_sleep.adapters.stack import LoraHooks, PreparedStack, StackItem, prepare_stack
from agent_sleep.adapters.validation import (
    DEFAULT_MAX_DELTA_NORM,
    Check,
    ValidationReport,
    peft_equivalence,
    validate_adapter,
)

__all__ = [
    "CONFIG_FILE", "DEFAULT_MAX_DELTA_NORM", "MANIFEST_FILE", "WEIGHTS_FILE", "AdapterArtifact",
    "AdapterManifest", "AdapterSources", "BaseModelRef", "Check", "GeneratorInfo", "LoraHooks",
    "LoraWeights", "PreparedStack", "StackItem", "ValidationReport", "check_name", "lora_layers",
    "materialize_cat", "merge_linear", "merge_ties", "peft_equivalence", "peft_key", "peft_lora_config",
    "prepare_stack", "read_adapter", "save_peft_adapter", "validate_adapter", "write_adapter",
]  # fmt: skip
