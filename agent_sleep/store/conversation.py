"""What the model saw: rebuild the input of every model call of an episode.

Capture stores the input of a model call in the payload of the event it produced
(the reply, or the ``error`` of a failed call) as ``payload["model_input"]``::

    {"messages": [h1, h2, ...],     # the message list, in order, as content hashes
     "tools": ht | None,            # the tool schemas offered, as one hash
     "tool_choice": ... | None,
     "prompt": hp | None,           # plain-text LLMs: the prompt instead of messages
     "blobs": {h: body, ...}}       # bodies this episode had not stored yet

A body is stored once per episode: later calls repeat only the hash. Messages are
LangChain message dicts (``{"type": "human", "data": {...}}`` as
``langchain_core.messages.message_to_dict`` writes them); tool schemas are the
list handed to the model. Bodies are looked up across the whole episode, so the
order in which parallel calls were written does not matter.

This module only reads events; it imports no LangChain unless asked for message
objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_sleep.store.records import EventRecord

MODEL_INPUT_KEY = "model_input"
MODEL_CALL_KINDS = ("assistant_message", "error")
"""The events whose payload can hold a model call's input (the reply, or a failed call's error)."""


@dataclass(frozen=True)
class ModelCall:
    """One model call: the exact input, and the event that recorded its result."""

    seq: int
    event_id: str
    kind: str  # assistant_message, or error for a failed call
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_choice: Any
    prompt: str | None
    reply: str
    # False when a body was cut to the payload cap or is missing (e.g. its event was dead-lettered)
    complete: bool

    def langchain_messages(self) -> list[Any]:
        """The messages as LangChain message objects, equal to those the model received."""
        from langchain_core.messages import messages_from_dict

        return messages_from_dict(self.messages)


def _blobs(events: Sequence[EventRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in events:
        inp = e.payload.get(MODEL_INPUT_KEY)
        if isinstance(inp, dict) and isinstance(inp.get("blobs"), dict):
            for h, body in inp["blobs"].items():
                out.setdefault(h, body)
    return out


def model_calls(events: Sequence[EventRecord]) -> list[ModelCall]:
    """The model calls recorded in ``events`` (one episode, in seq order)."""
    blobs = _blobs(events)
    calls: list[ModelCall] = []
    for e in events:
        inp = e.payload.get(MODEL_INPUT_KEY)
        if not isinstance(inp, dict):
            continue
        complete = True

        def body(h: Any) -> Any:
            nonlocal complete
            found = blobs.get(h)
            if found is None or (isinstance(found, dict) and found.get("truncated_from_bytes")):
                complete = False
            return found

        messages = [m for m in (body(h) for h in inp.get("messages") or []) if m is not None]
        tools = body(inp["tools"]) if inp.get("tools") else None
        prompt = body(inp["prompt"]) if inp.get("prompt") else None
        calls.append(ModelCall(
            seq=e.seq, event_id=e.id, kind=e.kind, messages=messages,
            tools=tools if isinstance(tools, list) else None, tool_choice=inp.get("tool_choice"),
            prompt=prompt.get("content") if isinstance(prompt, dict) else None, reply=e.content, complete=complete,
        ))
    return calls
