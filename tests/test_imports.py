"""``import agent_sleep`` stays light: an agent that only logs experiences never loads a model stack."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "lm_eval")


def test_logging_side_imports_no_model_stack() -> None:
    code = (
        "import sys, agent_sleep, agent_sleep.store, agent_sleep.capture, agent_sleep.capture.recorder, "
        "agent_sleep.config, agent_sleep.errors, agent_sleep.fsutil; "
        # The lazy public names an agent uses to log (they load LangChain, never torch).
        "agent_sleep.ExperienceRecorder, agent_sleep.ExperienceStore, agent_sleep.Settings, "
        "agent_sleep.SleepCallbackHandler, agent_sleep.SleepMiddleware; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"
