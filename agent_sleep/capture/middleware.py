"""Capture for LangChain v1 ``create_agent`` agents, as agent middleware.

    agent = create_agent(model, tools, middleware=[SleepMiddleware("helpdesk")])

``before_agent`` opens an episode and logs the new input messages (those after
the last model or tool message, so a checkpointed thread's history is not
logged again), ``after_model`` logs each model reply, ``wrap_tool_call`` logs
the call and its result or error, ``after_agent`` closes the episode. The
episode id travels in the agent state (``sleep_episode_id``), so concurrent
invocations of one agent never mix. Capture never raises into the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState
from langgraph.config import get_config
from typing_extensions import NotRequired

from agent_sleep.capture.recorder import ExperienceRecorder, _text_of
from agent_sleep.config import Settings
from agent_sleep.names import check_agent_name

log = logging.getLogger("agent_sleep.capture")


class SleepState(AgentState):
    sleep_episode_id: NotRequired[str | None]


def _new_inputs(messages: list[Any]) -> list[Any]:
    start = len(messages)
    while start > 0 and getattr(messages[start - 1], "type", None) not in ("ai", "tool"):
        start -= 1
    return messages[start:]


class SleepMiddleware(AgentMiddleware[SleepState, Any]):
    """Logs every invocation of a ``create_agent`` agent as one episode."""

    state_schema = SleepState

    def __init__(self, agent: str, *, url: str | None = None, settings: Settings | None = None,
                 recorder: ExperienceRecorder | None = None) -> None:
        super().__init__()
        check_agent_name(agent)
        self.recorder = recorder or ExperienceRecorder(agent, url=url, settings=settings)
        self.last_episode_id: str | None = None

    @property
    def name(self) -> str:
        return "SleepMiddleware"

    def before_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        try:
            thread_id = (get_config().get("configurable") or {}).get("thread_id")
            eid = self.recorder.start_episode(thread_id=thread_id)
            self.recorder.log_messages(eid, _new_inputs(list(state.get("messages", []))))
            self.last_episode_id = eid
            return {"sleep_episode_id": eid}
        except Exception:
            log.exception("agent-sleep capture failed in before_agent")
            return None

    def after_model(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        eid = state.get("sleep_episode_id")
        messages = state.get("messages") or []
        if eid and messages:
            try:
                self.recorder.log_messages(eid, [messages[-1]])
            except Exception:
                log.exception("agent-sleep capture failed in after_model")
        return None

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        eid = (request.state or {}).get("sleep_episode_id") if isinstance(request.state, dict) else None
        call = request.tool_call
        if eid:
            try:
                self.recorder.log(eid, "tool_call", "", name=call.get("name"),
                                  payload={"args": call.get("args"), "tool_call_id": call.get("id")})
            except Exception:
                log.exception("agent-sleep capture failed in wrap_tool_call")
        try:
            result = handler(request)
        except Exception as exc:
            if eid:
                self.recorder.log(eid, "tool_result", f"{type(exc).__name__}: {exc}", name=call.get("name"),
                                  payload={"tool_call_id": call.get("id"), "status": "error"})
            raise
        if eid:
            try:
                content = getattr(result, "content", None)
                self.recorder.log(eid, "tool_result", _text_of(content) if content is not None else str(result),
                                  name=call.get("name"),
                                  payload={"tool_call_id": call.get("id"), "status": getattr(result, "status", "success")})
            except Exception:
                log.exception("agent-sleep capture failed in wrap_tool_call")
        return result

    def after_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        eid = state.get("sleep_episode_id")
        if eid:
            try:
                self.recorder.end_episode(eid, status="completed")
            except Exception:
                log.exception("agent-sleep capture failed in after_agent")
        return None

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self.recorder.flush(timeout)
