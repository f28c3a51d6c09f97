"""Capture for any LangGraph graph or LangChain runnable through callbacks.

    graph.invoke(inputs, config={"callbacks": [SleepCallbackHandler("helpdesk")]})

Each top-level run becomes one episode whose id is the run id (pass
``config["run_id"]`` to choose it, e.g. to attach feedback later); the
``thread_id`` of the LangGraph config is recorded. Input messages, model
replies (with tool calls and token usage), tool calls and tool results become
ordered events; the episode ends ``completed`` or ``error``. Every callback
only queues work for the background writer, and any failure inside capture is
logged, never raised into the agent.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from agent_sleep.capture.recorder import ExperienceRecorder, _text_of
from agent_sleep.config import Settings
from agent_sleep.names import check_agent_name

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
        self._lock = threading.Lock()
        self.last_episode_id: str | None = None

    @staticmethod
    def episode_id_for(run_id: UUID) -> str:
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
        eid = self.recorder.start_episode(
            thread_id=meta.get("thread_id"), episode_id=self.episode_id_for(run_id),
            metadata={**self.metadata, "name": kwargs.get("name")},
        )
        self.last_episode_id = eid
        messages = inputs.get("messages") if isinstance(inputs, dict) else inputs
        if isinstance(messages, (list, tuple)) and not (isinstance(messages, tuple) and len(messages) == 2
                                                        and isinstance(messages[0], str)):
            self.recorder.log_messages(eid, messages)
        elif messages is not None:
            self.recorder.log_messages(eid, [messages])

    @_never_raise
    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if parent_run_id is None and run_id in self._root:
            self.recorder.end_episode(run_id.hex, status="completed")
        self._forget(run_id)

    @_never_raise
    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kwargs: Any) -> None:
        if parent_run_id is None and run_id in self._root:
            eid = run_id.hex
            self.recorder.log(eid, "error", f"{type(error).__name__}: {error}")
            self.recorder.end_episode(eid, status="error", error=f"{type(error).__name__}: {error}")
        self._forget(run_id)

    # -- models -----------------------------------------------------------------------------
    @_never_raise
    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._episode(run_id, parent_run_id)

    @_never_raise
    def on_llm_start(self, serialized: dict[str, Any] | None, prompts: Any, *, run_id: UUID,
                     parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._episode(run_id, parent_run_id)

    @_never_raise
    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        self._forget(run_id)
        if eid is None:
            return
        for gens in response.generations:
            for gen in gens:
                message = getattr(gen, "message", None)
                if message is not None:
                    self.recorder.log_messages(eid, [message])
                else:
                    self.recorder.log(eid, "assistant_message", gen.text)

    @_never_raise
    def on_llm_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kwargs: Any) -> None:
        eid = self._episode(run_id, parent_run_id)
        self._forget(run_id)
        if eid is not None:
            self.recorder.log(eid, "error", f"model error: {type(error).__name__}: {error}")

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
        if eid is not None:
            self.recorder.log(eid, "tool_result", f"{type(error).__name__}: {error}", name=kwargs.get("name"),
                              payload={"status": "error"})

    def flush(self, timeout: float | None = 30.0) -> bool:
        return self.recorder.flush(timeout)
