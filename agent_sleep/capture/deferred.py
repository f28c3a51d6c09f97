"""Work capture leaves for the writer thread: model inputs and JSON values.

The agent's thread queues an op with a ``"_defer"`` entry holding references
(the message list a model was called with, a graph's input state, a resume
value); the background writer calls :meth:`DeferredOps.finish` on it, in queue
order, before it writes or spills the op. Serialising, hashing and deduplication
happen there, never on the agent's thread.

Model inputs are stored as described in :mod:`agent_sleep.store.conversation`:
the message list and the tool set as content hashes, and the bodies this episode
has not stored yet. What was stored is remembered per episode (for the last
``remember`` episodes, and forgotten when one completes); an episode the writer
no longer remembers just stores a body again, which costs space, never
correctness. The hash of a message object is computed once and remembered for as
long as the object lives (LangGraph hands the same objects to every later call
of a thread), so each call costs the writer only its new messages; like LangGraph
itself, this treats a message as immutable once a model has seen it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agent_sleep.store.conversation import MODEL_INPUT_KEY
from agent_sleep.store.ops import Op

DEFER = "_defer"
log = logging.getLogger("agent_sleep.capture")


class CaptureWarning(UserWarning):
    """Emitted when captured experiences are buffered because the database is down."""


@dataclass(frozen=True)
class ModelInput:
    """What one model call was given, as references taken on the agent's thread."""

    messages: list[Any]
    tools: list[Any] | None = None
    tool_choice: Any = None
    prompt: str | None = None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def message_dict(message: Any) -> dict[str, Any]:
    """A LangChain message (or anything ``convert_to_messages`` takes) as ``message_to_dict`` writes it."""
    from langchain_core.messages import BaseMessage, convert_to_messages, message_to_dict

    if not isinstance(message, BaseMessage):
        message = convert_to_messages([message])[0]
    return message_to_dict(message)


def tool_schema(tool: Any) -> Any:
    """A tool as the schema a chat model is given (OpenAI format); dicts pass through."""
    if isinstance(tool, dict):
        return tool
    try:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return convert_to_openai_tool(tool)
    except Exception:  # an object no converter knows: keep its name at least
        return {"unconvertible_tool": repr(tool)[:1000]}


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data: messages, pydantic models, dataclasses, ``Send`` … become dicts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 32:
        return repr(value)[:1000]
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value)}
    if hasattr(value, "type") and hasattr(value, "content") and hasattr(value, "additional_kwargs"):
        out = {"type": value.type, "content": jsonable(value.content, depth + 1)}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(value, key, None):
                out[key] = jsonable(getattr(value, key), depth + 1)
        return out
    if type(value).__name__ == "Send" and hasattr(value, "node") and hasattr(value, "arg"):
        return {"send": value.node, "arg": jsonable(value.arg, depth + 1)}
    if hasattr(value, "model_dump"):
        try:
            return jsonable(value.model_dump(mode="json"), depth + 1)
        except Exception:
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    return str(value)


def to_json_text(value: Any) -> str:
    """``value`` as JSON text (a string too, so that readers can always ``json.loads`` it)."""
    return json.dumps(jsonable(value), ensure_ascii=False, default=str)


def _cut(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[: max(0, max_bytes)].decode("utf-8", "ignore")


class DeferredOps:
    """Finishes deferred ops for one writer. Call :meth:`finish` from one thread, in queue order."""

    def __init__(self, remember: int = 4096, max_known: int = 200_000) -> None:
        self.remember = remember
        self.max_known = max_known
        self._stored: OrderedDict[str, set[str]] = OrderedDict()
        # id(message) -> (weak reference, hash): entries leave when the message is collected
        self._known: dict[int, tuple[weakref.ref[Any], str]] = {}

    def finish(self, op: Op) -> Op:
        """``op`` with its deferred work done (a new dict), or ``op`` itself when it has none."""
        try:
            return self._finish(op)
        except Exception as exc:  # never lose the op over its extras
            log.exception("agent-sleep could not finish a captured %s op", op.get("op"))
            out = {k: v for k, v in op.items() if k != DEFER}
            if out.get("op") == "event":
                out["payload"] = {**(out.get("payload") or {}), "capture_error": f"{type(exc).__name__}: {exc}"[:500]}
            return out

    def _finish(self, op: Op) -> Op:
        if op.get("op") == "episode_end" and op.get("status") in ("completed", "error"):
            self._stored.pop(op.get("id", ""), None)
        spec = op.get(DEFER)
        if spec is None:
            return op
        out = {k: v for k, v in op.items() if k != DEFER}
        cap = int(spec.get("cap") or 1_000_000)
        if "cont_value" in spec and out.get("cont"):
            out["cont"] = {**out["cont"], "value": _cut(to_json_text(spec["cont_value"]), cap // 2)}
        if "json" in spec:
            text = to_json_text(spec["json"])
            size = len(text.encode("utf-8"))
            if size > cap // 2:
                warnings.warn(f"agent-sleep: {out.get('kind')} value of {size:,} bytes truncated to "
                              f"{cap // 2:,} (Settings.max_payload_bytes)", CaptureWarning, stacklevel=2)
                text = _cut(text, cap // 2)
                out["payload"] = {**(out.get("payload") or {}), "truncated_from_bytes": size}
            out["content"] = text
        if "model_input" in spec:
            used = len(str(out.get("content", "")).encode("utf-8")) + len(_canonical(out.get("payload") or {}))
            key = str(out.get("episode_id") or "")
            payload = dict(out.get("payload") or {})
            payload[MODEL_INPUT_KEY] = self._model_input(key, spec["model_input"], cap - used - 200)
            out["payload"] = payload
        return out

    # -- model inputs --------------------------------------------------------------
    def _stored_for(self, episode: str) -> set[str]:
        found = self._stored.get(episode)
        if found is None:
            found = self._stored[episode] = set()
            while len(self._stored) > self.remember:
                self._stored.popitem(last=False)
        else:
            self._stored.move_to_end(episode)
        return found

    def _model_input(self, episode: str, mi: ModelInput, budget: int) -> dict[str, Any]:
        stored = self._stored_for(episode)
        new: dict[str, tuple[Any, int]] = {}

        def ref(body: Any) -> str:
            text = _canonical(body)
            h = _digest(text)
            if h not in stored and h not in new:
                new[h] = (json.loads(text), len(text.encode("utf-8")))
            return h

        def message_ref(m: Any) -> str:
            hit = self._known.get(id(m))
            if hit is not None and hit[0]() is m and hit[1] in stored:
                return hit[1]
            h = ref(message_dict(m))
            self._remember(m, h)
            return h

        out: dict[str, Any] = {"messages": [message_ref(m) for m in mi.messages]}
        out["tools"] = ref([tool_schema(t) for t in mi.tools]) if mi.tools else None
        if mi.tool_choice is not None:
            out["tool_choice"] = jsonable(mi.tool_choice)
        if mi.prompt is not None:
            out["prompt"] = ref({"content": mi.prompt})
        out["blobs"] = self._fit(new, budget)
        stored.update(new)
        return out

    def _remember(self, message: Any, h: str) -> None:
        if len(self._known) >= self.max_known:
            self._known.clear()
        key = id(message)
        try:
            self._known[key] = (weakref.ref(message, lambda _, k=key, known=self._known: known.pop(k, None)), h)
        except TypeError:  # not weak-referenceable (a tuple, a dict): hashed every time
            pass

    @staticmethod
    def _fit(new: dict[str, tuple[Any, int]], budget: int) -> dict[str, Any]:
        """The bodies, the largest cut down until they fit ``budget`` bytes (and marked as cut)."""
        blobs = {h: body for h, (body, _) in new.items()}
        total = sum(size for _, size in new.values())
        if total <= budget:
            return blobs
        for h, (body, size) in sorted(new.items(), key=lambda kv: -kv[1][1]):
            if total <= budget:
                break
            keep = max(0, min(size // 4, budget // max(1, 2 * len(new))))
            if isinstance(body, dict) and isinstance(body.get("data"), dict):
                data = body["data"]
                content = data.get("content")
                text = content if isinstance(content, str) else _canonical(content)
                blobs[h] = {**body, "data": {**data, "content": _cut(text, keep)}, "truncated_from_bytes": size}
            else:
                blobs[h] = {"truncated_from_bytes": size}
            total -= size - len(_canonical(blobs[h]))
        warnings.warn(f"agent-sleep: model input of {sum(s for _, s in new.values()):,} bytes cut to fit the "
                      "payload cap (Settings.max_payload_bytes)", CaptureWarning, stacklevel=3)
        return blobs
