"""agent-sleep: sleep-cycle learning for LLM agents.

While awake an agent's experiences are logged to SQL (:mod:`agent_sleep.capture`,
:mod:`agent_sleep.store`); while asleep a consolidation job turns the part worth
keeping into LoRA adapters. Importing this package is light: it never imports
torch, transformers or peft; those load only where a model is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from agent_sleep._version import __version__
from agent_sleep.errors import AgentSleepError

# Public names resolved lazily, so `import agent_sleep` stays cheap.
_LAZY = {
    # awake: log what the agent does
    "ExperienceStore": "agent_sleep.store:ExperienceStore",
    "SleepCallbackHandler": "agent_sleep.capture.callback:SleepCallbackHandler",
    "SleepMiddleware": "agent_sleep.capture.middleware:SleepMiddleware",
    "ExperienceRecorder": "agent_sleep.capture.recorder:ExperienceRecorder",
    "ChatLocalModel": "agent_sleep.runtime.chat_model:ChatLocalModel",
    "load_base_model": "agent_sleep.models.loader:load_base_model",
    "Settings": "agent_sleep.config:Settings",
    # asleep: turn it into adapters, keep them versioned, serve them live
    "D2LGenerator": "agent_sleep.generators.d2l:D2LGenerator",
    "internalize_to_registry": "agent_sleep.generators.d2l:internalize_to_registry",
    "AdapterManifest": "agent_sleep.adapters:AdapterManifest",
    "read_adapter": "agent_sleep.adapters:read_adapter",
    "write_adapter": "agent_sleep.adapters:write_adapter",
    "AdapterRegistry": "agent_sleep.registry:AdapterRegistry",
    "LiveRuntime": "agent_sleep.runtime.live:LiveRuntime",
}

if TYPE_CHECKING:  # pragma: no cover
    from agent_sleep.adapters import AdapterManifest, read_adapter, write_adapter
    from agent_sleep.capture.callback import SleepCallbackHandler
    from agent_sleep.capture.middleware import SleepMiddleware
    from agent_sleep.capture.recorder import ExperienceRecorder
    from agent_sleep.config import Settings
    from agent_sleep.generators.d2l import D2LGenerator, internalize_to_registry
    from agent_sleep.models.loader import load_base_model
    from agent_sleep.registry import AdapterRegistry
    from agent_sleep.runtime.chat_model import ChatLocalModel
    from agent_sleep.runtime.live import LiveRuntime
    from agent_sleep.store import ExperienceStore


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'agent_sleep' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "AdapterManifest", "AdapterRegistry", "AgentSleepError", "ChatLocalModel", "D2LGenerator", "ExperienceRecorder",
    "ExperienceStore", "LiveRuntime", "Settings", "SleepCallbackHandler", "SleepMiddleware", "__version__",
    "internalize_to_registry", "load_base_model", "read_adapter", "write_adapter",
]  # fmt: skip
