"""A test-only fault hook: ``AGENT_SLEEP_FAULT=<point>`` kills the process with SIGKILL at that point.

The consolidation stages call :func:`fault_point` at the places where a crash is most awkward
(``generate:after_register``: the adapter is registered, the stage not yet marked done). The fault
tests run a cycle in a child process with the variable set, then run it again and check that the
rerun finishes without duplicates. With the variable unset (always, outside those tests) the call
compares one string and returns. :data:`POINTS` lists every point, so a test can go through them all.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "POINTS", "fault_point"]

ENV = "AGENT_SLEEP_FAULT"
POINTS = (
    "select:after_plan",  # the plan is made, the stage not yet done
    "generate:after_write",  # an adapter folder is written in the run folder, not registered
    "generate:after_register",  # registered, the skill's progress not saved
    "generate:after_candidate",  # a candidate's progress is saved, the next candidate not started
    "evaluate:after_incumbent",  # the live stack is scored, no candidate yet
    "evaluate:after_candidate",  # a candidate's verdict is saved, the next candidate not judged, no winner yet
    "evaluate:after_decision",  # a skill's gate decision is saved, the registry not yet told
    "deploy:after_deploy",  # the stack is live, the stage not yet done
    "finish:after_mark",  # episodes are marked consolidated, the run not yet finished
)


def fault_point(name: str) -> None:
    """Die here, at once and without cleanup, when ``AGENT_SLEEP_FAULT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
