"""Capture for any LangGraph graph or LangChain runnable through callbacks.

    graph.invoke(inputs, config={"callbacks": [SleepCallbackHandler("helpdesk")]})

Each top-level run becomes one episode whose id is the run id (pass
``config["run_id"]`` to choose it, e.g. to attach feedback later); the
``thread_id`` of the LangGraph config is recorded. Input messages, model
replies (with tool calls and token usage), tool calls and tool results become
ordered events. Each reply (or model error) also carries the exact input of its
model call (messages, system prompt, tools offered), deduplicated per episode
and rebuilt by ``ExperienceStore.model_calls``. A graph whose input or output is
not a list of messages (a TypedDict state, ``Send`` fan-out) gets ``run_input``
and ``run_output`` events with the state as JSON.

An ``interrupt()`` logs an ``interrupt`` event with its payload and ends the
episode ``interrupted``; resuming with ``Command(resume=...)`` continues that
episode (the newest interrupted one of this agent on the same ``thread_id``,
found by the store, so the resuming process may be another one) with a
``resume`` event holding the value; the resumed run's id names the same episode.
Otherwise the episode ends ``completed`` or ``error``. Every callback only
queues work for the background writer, and any failure inside capture is logged,
never raised into the agent.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from agent_sleep.capture.deferred import ModelInput
from agent_sleep.capture.recorder import ExperienceRecorder, _text_of
from agent_sleep.config import Settings
from agent_sleep.names import check_agent_name

try:  # LangGraph's control-flow exceptions are not errors of the run
    from langgraph.errors import GraphBubbleUp, GraphInterrupt
except ImportError:  # pragma: no cover - plain LangChain without LangGraph
    GraphBubbleUp = GraphInterrupt = ()  # type: ignore[assignment,misc]

log = logging.getLogger("agent_sleep.capture")
F = TypeVar("F", bound=Callable[..., Any])


def _never_raise(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:  # capture must never break the agent
            log.exception("agent-sleep capture failed in %s", fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]


def _is_message(x: Any) -> bool:
    return (isinstance(x, str) or (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str))
            or (hasattr(x, "content") and hasattr(x, "type"))
            or (isinstance(x, dict) and "content" in x and ("role" in x or "type" in x)))


def _input_messages(inputs: Any) -> list[Any] | None:
    """The messages of a run's input, or None when the input is not messages (it is logged as JSON)."""
    if isinstance(inputs, dict) and "messages" in inputs:
        messages = inputs["messages"]
    else:
        messages = inputs
    if _is_message(messages):
        return [messages]
    if isinstance(messages, (list, tuple)) and all(_is_message(m) for m in messages):
        return list(messages)
    return None


def _is_messages_output(outputs: Any) -> bool:
    # The reply of a messages graph or chain is logged by the model callbacks already.
    return (isinstance(outputs, dict) and "messages" in outputs) or _input_messages(outputs) is not None


def _snapshot(value: Any) -> Any:
    """A shallow copy, so the writer thread serialises the value as it was at this moment."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _interrupts(error: BaseException) -> list[Any]:
    found = error.args[0] if error.args else ()
    return list(found) if isinstance(found, (list, tuple)) else [found]


class SleepCallbackHandler(BaseCallbackHandler):
    """LangChain callback handler that logs each top-level run as an episode."""

    raise_error = False
    run_inline = True  # cheap and thread-safe: keep event order within a run

    def __init__(self, agent: str, *, url: str | None = None, settings: Settings | None = None,
                 recorder: ExperienceRecorder | None = None, metadata: dict[str, Any] | None = None) -> None:
        check_agent_name(agent)
        self.recorder = recorder or ExperienceRecorder(agent, url=url, settings=settings)
        self.metadata = metadata or {}
        self._root: dict[UUID, UUID] = {}  # run id -> root run id
        self._interrupted: dict[UUID, set[str]] = {}  # root run id -> ids of the interrupts it logged
        self._inputs: dict[UUID, ModelInput] = {}  # model run id -> what the model was given
        self._lock = threading.Lock()
        self.last_episode_id: str | None = None

    @staticmethod
    def episode_id_for(run_id: UUID) -> str:
        """The episode id of a top-level run (for a resumed run: an id the store resolves to the
        interrupted episode it continued)."""
        return run_id.hex

    def _episode(self, run_id: UUID, parent_run_id: UUID | None) -> str | None:
        with self._lock:
            if parent_run_id is None:
                root = self._root.get(run_id)
            else:
                root = self._root.get(parent_run_id)
                if root is not None:
                    self._root[run_id] = root
        return None if root is None else root.hex

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._root.pop(run_id, None)

    # -- chains (the graph itself and its nodes) ----------------------------------------
    @_never_raise
    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, metadata: dict[str, Any] | None = None,
                       **kwargs: Any) -> None:
        if parent_run_id is not None:
            self._episode(run_id, parent_run_id)
            return
        with self._lock:
            self._root[run_id] = run_id
        meta = metadata or {}
        episode_meta = {**self.metadata, "name": kwargs.get("name")}
        is_command = type(inputs).__name__ == "Command" and hasattr(inputs, "resume")
        if is_command or (inputs is None and meta.get("thread_id") is not None):
            # Command(resume=...), or invoke(None) going on from the thread's checkpoint.
            value = _snapshot(inputs.resume) if is_command else None
            eid = self.recorder.continue_episode(self.episode_id_for(run_id), thread_id=meta.get("thread_id"),
                                                 value=value, metadata=episode_meta)
            self.last_episode_id = eid
            update = getattr(inputs, "update", None)
            if update is not None:
                messages = _input_messages(update)
                if messages is not None:
                    self.recorder.log_messages(eid, messages)
                else:
                    self.recorder.log_json(eid, "run_input", _snapshot(update), name="update")
            return
        eid = self.recorder.start_episode(
            thread_id=meta.get("thread_id"), episode_id=self.episode_id_for(run_id), metadata=episode_meta,
        )
        self.last_episode_id = eid
        messages = _input_messages(inputs)
        if messages is not None:
            self.recorder.log_messages(eid, messages)
        elif inputs is not None:
            self.recorder.log_json(eid, "run_input", _snapshot(inputs))

    @_never_raise
    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if parent_run_id is None and run_id in self._root:
            eid = run_id.hex
            with self._lock:
                interrupted = self._interrupted.pop(run_id, None)
            if interrupted:
                self.recorder.end_episode(eid, status="interrupted")
            else:
                if outputs is not None and not _is_messages_output(outputs):
                    self.recorder.log_json(eid, "run_output", _snapshot(outputs))
                self.recorder.end_episode(eid, status="completed")
        self._forget(run_id)

    @_never_raise
    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        if isinstance(error, GraphInterrupt):
            eid = self._episode(run_id, parent_run_id)
            if eid is not None:
                self._log_interrupts(UUID(hex=eid), error)
            if parent_run_id is None and run_id in self._root:
                with self._lock:
                    self._interrupted.pop(run_id, None)
                self.recorder.end_episode(run_id.hex, status="interrupted")
        elif parent_run_id is None and run_id in self._root:
            eid = run_id.hex
            with self._lock:
                self._interrupted.pop(run_id, None)
            self.recorder.log(eid, "error", f"{type(error).__name__}: {error}")
            self.recorder.end_episode(eid, status="error", error=f"{type(error).__name__}: {error}")
        self._forget(run_id)

    def _log_interrupts(self, root: UUID, error: BaseException) -> None:
        # The same interrupt bubbles through every enclosing node and subgraph: log it once.
        for intr in _interrupts(error):
            iid = str(getattr(intr, "id", "") or id(intr))
            with self._lock:
                seen = self._interrupted.setdefault(root, set())
                if iid in seen:
                    continue
                seen.add(iid)
            self.recorder.log_json(root.hex, "interrupt", _snapshot(getattr(intr, "value", intr)),
                                   payload={"interrupt_id": iid})

    # -- models -----------------------------------------------------------------------------
    @_never_raise
    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, invocation_params: dict[str, Any] | None = None,
                            **kwargs: Any) -> None:
        if self._episode(run_id, parent_run_id) is None:
            return
        params = invocation_params or {}
        tools = params.get("tools") or params.get("functions")
        # One list per prompt; LangChain starts one run per prompt, so this is the model's input.
        self._inputs[run_id] = ModelInput(messages=list(messages[0]) if messages else [],
                                          tools=list(tools) if tools else None,
                                          tool_choice=params.get("tool_choice"))

    @_never_raise
    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: Any, *, run_id: UUID,
                     parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if self._episode(run_id, parent_run_id) is not None and prompts:
            self._inputs[run_id] = ModelInput(messages=[], prompt=str(prompts[0]))

    @_never_raise
    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        self._forget(run_id)
        model_input = self._inputs.pop(run_id, None)
        if eid is None:
            return
        for gens in response.generations:
            for gen in gens:
                message = getattr(gen, "message", None)
                if message is not None:
                    self.recorder.log_messages(eid, [message], model_input=model_input)
                else:
                    self.recorder.log(eid, "assistant_message", gen.text, model_input=model_input)
                model_input = None  # n > 1 choices: the input once, with the first

    @_never_raise
    def on_llm_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        self._forget(run_id)
        model_input = self._inputs.pop(run_id, None)
        if eid is not None:
            self.recorder.log(eid, "error", f"model error: {type(error).__name__}: {error}", model_input=model_input)

    # -- tools ---------------------------------------------------------------------------------
    @_never_raise
    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, inputs: dict[str, Any] | None = None,
                      **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        if eid is None:
            return
        name = (serialized or {}).get("name") or kwargs.get("name")
        args = inputs if inputs is not None else input_str
        tool_call_id = (kwargs.get("metadata") or {}).get("tool_call_id")
        self.recorder.log(eid, "tool_call", input_str if isinstance(input_str, str) else str(input_str), name=name,
                          payload={"args": args, "tool_call_id": tool_call_id})

    @_never_raise
    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        self._forget(run_id)
        if eid is None:
            return
        content = getattr(output, "content", output)
        payload = {"tool_call_id": getattr(output, "tool_call_id", None), "status": getattr(output, "status", "success")}
        self.recorder.log(eid, "tool_result", _text_of(content), name=kwargs.get("name") or getattr(output, "name", None),
                          payload=payload)

    @_never_raise
    def on_tool_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                      **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        self._forget(run_id)
        if eid is not None and not isinstance(error, GraphBubbleUp):  # an interrupt is logged by the graph
            self.recorder.log(eid, "tool_result", f"{type(error).__name__}: {error}", name=kwargs.get("name"),
                              payload={"status": "error"})

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self.recorder.flush(timeout)
