"""The top-level API: exactly these names, each resolvable, and none of them makes ``import agent_sleep`` heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import agent_sleep

PUBLIC = [
    "AdapterManifest", "AdapterRegistry", "AgentSleepError", "ChatLocalModel", "D2LGenerator", "ExperienceRecorder",
    "ExperienceStore", "LiveRuntime", "Settings", "SleepCallbackHandler", "SleepMiddleware", "__version__",
    "internalize_to_registry", "load_base_model", "read_adapter", "write_adapter",
]  # fmt: skip
# What an agent process that only logs experiences must not pay for at import time.
HEAVY = ["fastapi", "langchain_core", "langgraph", "lm_eval", "numpy", "peft", "safetensors", "sqlalchemy", "torch",
         "transformers", "uvicorn"]  # fmt: skip
# Model code: loaded only once a model is used, never by resolving a public name.
MODEL_CODE = ["lm_eval", "peft", "safetensors", "torch", "transformers"]


def _loaded_after(code: str, modules: list[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_all_is_pinned_and_sorted() -> None:
    assert agent_sleep.__all__ == PUBLIC
    assert PUBLIC == sorted(PUBLIC)


def test_every_public_name_resolves_to_what_it_names() -> None:
    for name in set(PUBLIC) - {"__version__"}:
        value = getattr(agent_sleep, name)
        assert value.__name__ == name and value.__module__.startswith("agent_sleep."), name
    assert isinstance(agent_sleep.__version__, str) and agent_sleep.__version__
    namespace: dict[str, object] = {}
    exec("from agent_sleep import *", namespace)  # noqa: S102 - what a star import gives
    assert set(PUBLIC) <= set(namespace)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        agent_sleep.NoSuchThing  # noqa: B018


def test_import_is_light() -> None:
    assert _loaded_after("import agent_sleep", HEAVY) == []


def test_resolving_every_name_loads_no_model_code() -> None:
    code = f"import agent_sleep\nfor name in {PUBLIC!r}:\n    getattr(agent_sleep, name)"
    assert _loaded_after(code, MODEL_CODE) == []
