"""Capture for LangChain v1 ``create_agent`` agents, as agent middleware.

    agent = create_agent(model, tools, middleware=[SleepMiddleware("helpdesk")])

``before_agent`` opens an episode and logs the new input messages (those after
the last model or tool message, so a checkpointed thread's history is not
logged again), ``wrap_model_call`` notes what the model is given (system prompt,
messages, tools) and ``after_model`` logs each reply with that input
(deduplicated per episode; ``ExperienceStore.model_calls`` rebuilds it),
``wrap_tool_call`` logs the call and its result or error, ``after_agent`` closes
the episode. Put ``SleepMiddleware`` last in the list to record the request as
the other middleware left it. The episode id travels in the agent state
(``sleep_episode_id``), so concurrent invocations of one agent never mix and a
run resumed after an ``interrupt()`` in a tool (the episode ends
``interrupted``) continues the same episode, from any process. Interrupts raised
by other middleware (``HumanInTheLoopMiddleware``) are invisible to middleware:
the episode stays ``running`` until the resumed run completes it; the callback
handler records those too. Capture never raises into the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState
from langgraph.config import get_config
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from typing_extensions import NotRequired

from agent_sleep.capture.deferred import ModelInput
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


def _episode_of(request: Any) -> str | None:
    state = getattr(request, "state", None)
    return state.get("sleep_episode_id") if isinstance(state, dict) else None


class SleepMiddleware(AgentMiddleware[SleepState, Any]):
    """Logs every invocation of a ``create_agent`` agent as one episode."""

    state_schema = SleepState

    def __init__(self, agent: str, *, url: str | None = None, settings: Settings | None = None,
                 recorder: ExperienceRecorder | None = None) -> None:
        super().__init__()
        check_agent_name(agent)
        self.recorder = recorder or ExperienceRecorder(agent, url=url, settings=settings)
        self.last_episode_id: str | None = None
        self._inputs: dict[str, ModelInput] = {}  # episode -> input of its model call in progress

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

    # -- model calls ------------------------------------------------------------------------
    def _model_started(self, request: Any) -> str | None:
        eid = _episode_of(request)
        if eid:
            try:
                system = getattr(request, "system_message", None)
                messages = [system, *request.messages] if system is not None else list(request.messages)
                tools = getattr(request, "tools", None)
                self._inputs[eid] = ModelInput(messages=messages, tools=list(tools) if tools else None,
                                               tool_choice=getattr(request, "tool_choice", None))
            except Exception:
                log.exception("agent-sleep capture failed in wrap_model_call")
        return eid

    def _model_failed(self, eid: str | None, exc: BaseException) -> None:
        model_input = self._inputs.pop(eid, None) if eid else None
        if eid and not isinstance(exc, GraphBubbleUp):
            try:
                self.recorder.log(eid, "error", f"model error: {type(exc).__name__}: {exc}", model_input=model_input)
            except Exception:
                log.exception("agent-sleep capture failed in wrap_model_call")

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        eid = self._model_started(request)
        try:
            return handler(request)
        except Exception as exc:
            self._model_failed(eid, exc)
            raise

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        eid = self._model_started(request)
        try:
            return await handler(request)
        except Exception as exc:
            self._model_failed(eid, exc)
            raise

    def after_model(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        eid = state.get("sleep_episode_id")
        messages = state.get("messages") or []
        if eid and messages:
            try:
                self.recorder.log_messages(eid, [messages[-1]], model_input=self._inputs.pop(eid, None))
            except Exception:
                log.exception("agent-sleep capture failed in after_model")
        return None

    # -- tool calls -------------------------------------------------------------------------
    def _tool_started(self, request: Any) -> tuple[str | None, dict[str, Any]]:
        eid = _episode_of(request)
        call = request.tool_call
        if eid:
            try:
                self.recorder.log(eid, "tool_call", "", name=call.get("name"),
                                  payload={"args": call.get("args"), "tool_call_id": call.get("id")})
            except Exception:
                log.exception("agent-sleep capture failed in wrap_tool_call")
        return eid, call

    def _tool_failed(self, eid: str | None, call: dict[str, Any], exc: BaseException) -> None:
        if not eid:
            return
        try:
            if isinstance(exc, GraphInterrupt):  # a human is asked; the run stops here until resumed
                for intr in (exc.args[0] if exc.args else ()):
                    self.recorder.log_json(eid, "interrupt", getattr(intr, "value", intr),
                                           payload={"interrupt_id": getattr(intr, "id", None)})
                self.recorder.end_episode(eid, status="interrupted")
            elif not isinstance(exc, GraphBubbleUp):
                self.recorder.log(eid, "tool_result", f"{type(exc).__name__}: {exc}", name=call.get("name"),
                                  payload={"tool_call_id": call.get("id"), "status": "error"})
        except Exception:
            log.exception("agent-sleep capture failed in wrap_tool_call")

    def _tool_done(self, eid: str | None, call: dict[str, Any], result: Any) -> None:
        if eid:
            try:
                content = getattr(result, "content", None)
                self.recorder.log(eid, "tool_result", _text_of(content) if content is not None else str(result),
                                  name=call.get("name"),
                                  payload={"tool_call_id": call.get("id"), "status": getattr(result, "status", "success")})
            except Exception:
                log.exception("agent-sleep capture failed in wrap_tool_call")

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        eid, call = self._tool_started(request)
        try:
            result = handler(request)
        except Exception as exc:
            self._tool_failed(eid, call, exc)
            raise
        self._tool_done(eid, call, result)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        eid, call = self._tool_started(request)
        try:
            result = await handler(request)
        except Exception as exc:
            self._tool_failed(eid, call, exc)
            raise
        self._tool_done(eid, call, result)
        return result

    def after_agent(self, state: SleepState, runtime: Any) -> dict[str, Any] | None:
        eid = state.get("sleep_episode_id")
        if eid:
            try:
                self._inputs.pop(eid, None)
                self.recorder.end_episode(eid, status="completed")
            except Exception:
                log.exception("agent-sleep capture failed in after_agent")
        return None

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self.recorder.flush(timeout)
