"""OpenAI chat-completions wire format ⇄ LangChain messages.

Everything here is pure data handling (no web framework, no threads): the
request body model, conversion of ``messages``/``tools`` into LangChain
objects, per-call generation arguments for whichever chat model a resolver
returned, and the response / stream-chunk bodies.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import tool_call, tool_call_chunk
from pydantic import BaseModel, ConfigDict, Field

from agent_sleep.errors import RequestError

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
_FINISH_ALIASES = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
    "function_call": "tool_calls", "tool_use": "tool_calls", "max_tokens": "length", "MAX_TOKENS": "length",
}  # fmt: skip


# ---------------------------------------------------------------- request body


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``.

    Unknown fields (``user``, ``metadata``, ``parallel_tool_calls``,
    penalties, ...) are accepted and ignored, as OpenAI clients send many.
    ``messages``/``tools`` are checked by :func:`to_langchain_messages` and
    :func:`check_tools`, which name the exact field in their errors.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self, *, max_tokens_limit: int | None = None) -> None:
        """Reject valid-looking requests this server cannot honour (``response_format`` is checked by
        :func:`agent_sleep.serving.structured.reply_check`)."""
        if self.n is not None and self.n != 1:
            raise RequestError(f"n must be 1 (this server returns one choice per request), got {self.n}", "n")
        if self.logprobs:
            raise RequestError("logprobs are not supported", "logprobs")
        if self.top_logprobs:
            raise RequestError("top_logprobs is not supported (this server returns no logprobs)", "top_logprobs")
        if self.stream_options is not None and not self.stream:
            raise RequestError("stream_options is only allowed when stream is true", "stream_options")
        asked = self.max_completion_tokens or self.max_tokens
        if max_tokens_limit is not None and asked is not None and asked > max_tokens_limit:
            raise RequestError(
                f"{self.budget_param} is {asked}, above this server's limit of {max_tokens_limit}",
                self.budget_param,
                code="max_tokens_too_large",
            )

    @property
    def budget_param(self) -> str:
        """The field that sets the answer length (``max_completion_tokens`` wins over ``max_tokens``)."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s] or None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---------------------------------------------------------------- messages


def _content(value: Any, param: str, *, allow_none: bool = False) -> str | list[str | dict[str, Any]]:
    if value is None and allow_none:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[str | dict[str, Any]] = []
        for j, part in enumerate(value):
            where = f"{param}[{j}]"
            if not isinstance(part, dict):
                raise RequestError(f"{where} must be an object like {{'type': 'text', 'text': ...}}", where)
            kind = part.get("type")
            if kind == "refusal":  # an assistant's refusal part carries no prompt text
                continue
            if kind != "text":
                raise RequestError(
                    f"{where}: content part type {kind!r} is not supported (only 'text')", f"{where}.type"
                )
            if not isinstance(part.get("text"), str):
                raise RequestError(f"{where}.text must be a string", f"{where}.text")
            parts.append({"type": "text", "text": part["text"]})
        return parts
    expected = "a string, a list of text parts or null" if allow_none else "a string or a list of text parts"
    raise RequestError(f"{param} must be {expected}, not {type(value).__name__}", param)


def _tool_calls(value: Any, param: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{param} must be a list", param)
    calls = []
    for j, raw in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(raw, dict):
            raise RequestError(f"{where} must be an object", where)
        if raw.get("type", "function") != "function":
            raise RequestError(f"{where}.type must be 'function'", f"{where}.type")
        call_id = raw.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise RequestError(f"{where}.id must be a non-empty string", f"{where}.id")
        fn = raw.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"{where}.function.name must be a non-empty string", f"{where}.function.name")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as exc:
                raise RequestError(
                    f"{where}.function.arguments is not valid JSON: {exc}", f"{where}.function.arguments"
                ) from None
        if not isinstance(args, dict):
            raise RequestError(f"{where}.function.arguments must encode a JSON object", f"{where}.function.arguments")
        calls.append(tool_call(name=fn["name"], args=args, id=call_id))
    return calls


def to_langchain_messages(messages: list[dict[str, Any]]) -> list[BaseMessage]:
    """OpenAI ``messages`` as LangChain messages; raises :class:`RequestError` naming the bad field."""
    out: list[BaseMessage] = []
    for i, msg in enumerate(messages):
        p = f"messages[{i}]"
        role = msg.get("role")
        name = msg.get("name") if isinstance(msg.get("name"), str) else None
        extra = {"name": name} if name else {}
        if role in ("system", "developer"):
            out.append(SystemMessage(content=_content(msg.get("content"), f"{p}.content"), **extra))
        elif role == "user":
            out.append(HumanMessage(content=_content(msg.get("content"), f"{p}.content"), **extra))
        elif role == "assistant":
            calls = _tool_calls(msg.get("tool_calls"), f"{p}.tool_calls")
            content = _content(msg.get("content"), f"{p}.content", allow_none=True)
            if not calls and msg.get("content") is None:
                raise RequestError(f"{p}.content is required unless tool_calls is given", f"{p}.content")
            out.append(AIMessage(content=content, tool_calls=calls, **extra))
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise RequestError(f"{p}.tool_call_id is required for role 'tool'", f"{p}.tool_call_id")
            out.append(ToolMessage(content=_content(msg.get("content"), f"{p}.content"), tool_call_id=call_id))
        elif role == "function":
            raise RequestError(f"{p}.role 'function' is deprecated and not supported; use 'tool'", f"{p}.role")
        elif role is None:
            raise RequestError(f"{p}.role is required", f"{p}.role")
        else:
            raise RequestError(
                f"{p}.role {role!r} is not one of 'system', 'developer', 'user', 'assistant', 'tool'", f"{p}.role"
            )
    return out


# ---------------------------------------------------------------- tools


def check_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> tuple[list[dict[str, Any]], Any]:
    """Validated OpenAI-format tools and ``tool_choice`` ('auto', 'none', 'required' or a function dict)."""
    checked: list[dict[str, Any]] = []
    names: list[str] = []
    for i, tool in enumerate(tools or []):
        p = f"tools[{i}]"
        if tool.get("type", "function") != "function":
            raise RequestError(f"{p}.type {tool.get('type')!r} is not supported (only 'function')", f"{p}.type")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"{p}.function.name must be a non-empty string", f"{p}.function.name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RequestError(f"{p}.function.parameters must be a JSON schema object", f"{p}.function.parameters")
        function = {"name": fn["name"], "parameters": params}
        if isinstance(fn.get("description"), str):
            function["description"] = fn["description"]
        checked.append({"type": "function", "function": function})
        names.append(fn["name"])
    if tool_choice is None or tool_choice in ("auto", "none"):
        return checked, tool_choice or "auto"
    if tool_choice == "required":
        if not checked:
            raise RequestError("tool_choice 'required' needs tools", "tool_choice")
        return checked, tool_choice
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type", "function") == "function" and isinstance(name, str):
            if name not in names:
                raise RequestError(f"tool_choice names {name!r}, which is not among the tools {names}", "tool_choice")
            return checked, {"type": "function", "function": {"name": name}}
    raise RequestError(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}",
        "tool_choice",
    )


# ---------------------------------------------------------------- generation arguments


def _fields(model: BaseChatModel) -> set[str]:
    return set(getattr(type(model), "model_fields", {}))


def call_kwargs(
    model: BaseChatModel, request: ChatCompletionRequest, *, max_tokens_limit: int | None = None
) -> dict[str, Any]:
    """Per-call overrides the chat model understands.

    A parameter the request leaves out keeps the model's own default (so a
    local model without ``temperature`` in the request decodes greedily),
    except that a default answer length above ``max_tokens_limit`` is lowered
    to it. One the model class does not declare is dropped rather than passed
    blindly.
    """
    fields = _fields(model)
    kwargs: dict[str, Any] = {}
    key = next((k for k in ("max_new_tokens", "max_tokens", "max_completion_tokens") if k in fields), None)
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is None and key is not None and max_tokens_limit is not None:
        default = getattr(model, key, None)
        if not isinstance(default, int) or default > max_tokens_limit:
            max_tokens = max_tokens_limit
    if max_tokens is not None and key is not None:
        kwargs[key] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        value = getattr(request, name)
        if value is not None and name in fields:
            kwargs[name] = value
    return kwargs


# ---------------------------------------------------------------- responses


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def finish_reason(raw: Any, has_tool_calls: bool) -> FinishReason:
    if has_tool_calls:
        return "tool_calls"
    return _FINISH_ALIASES.get(raw, "stop") if isinstance(raw, str) else "stop"  # type: ignore[return-value]


def usage_dict(usage: dict[str, Any] | None) -> dict[str, int]:
    prompt = int((usage or {}).get("input_tokens", 0) or 0)
    completion = int((usage or {}).get("output_tokens", 0) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def tool_call_dicts(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
        }
        for call in message.tool_calls
    ]


def merge_chunks(chunks: list[AIMessageChunk]) -> AIMessage:
    """One reply from a model's stream chunks (what ``invoke`` would have returned)."""
    if not chunks:
        return AIMessage(content="")
    merged = chunks[0] if len(chunks) == 1 else chunks[0] + chunks[1:]
    return AIMessage(
        content=merged.content,
        tool_calls=merged.tool_calls,
        invalid_tool_calls=merged.invalid_tool_calls,
        usage_metadata=merged.usage_metadata,
        response_metadata=merged.response_metadata,
    )


def message_chunk(message: AIMessage) -> AIMessageChunk:
    """A finished reply as one stream chunk (text, tool calls, usage and finish reason together)."""
    return AIMessageChunk(
        content=message.content,
        tool_call_chunks=[
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), index=i)
            for i, c in enumerate(message.tool_calls)
        ],
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
    )


def completion_body(
    message: AIMessage, *, completion_id: str, created: int, model: str, fingerprint: str
) -> dict[str, Any]:
    """The ``chat.completion`` object for a finished (non-streamed) reply."""
    calls = tool_call_dicts(message)
    text = str(message.text)
    reply: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason(message.response_metadata.get("finish_reason"), bool(calls)),
            }
        ],
        "usage": usage_dict(message.usage_metadata),  # type: ignore[arg-type]
    }


class ChunkWriter:
    """Turns LangChain stream chunks into ``chat.completion.chunk`` bodies for one streamed reply."""

    def __init__(self, *, completion_id: str, created: int, model: str, fingerprint: str, include_usage: bool) -> None:
        self._base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
        }
        self._include_usage = include_usage
        self._usage = {"input_tokens": 0, "output_tokens": 0}
        self._finish_raw: Any = None
        self._tool_index: dict[Any, int] = {}
        self._last_tool: int | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body = {**self._base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self._include_usage:
            body["usage"] = None
        return body

    def start(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def _tool_deltas(self, chunk: AIMessageChunk) -> list[dict[str, Any]]:
        deltas = []
        for tc in chunk.tool_call_chunks:
            # Providers number parallel calls with ``index``; a chunk without index or id continues the last call.
            if tc.get("index") is not None:
                key: tuple[str, Any] | None = ("index", tc["index"])
            elif tc.get("id"):
                key = ("id", tc["id"])
            else:
                key = None if self._last_tool is not None else ("index", 0)
            index = self._last_tool if key is None else self._tool_index.setdefault(key, len(self._tool_index))
            assert index is not None
            self._last_tool = index
            delta: dict[str, Any] = {"index": index}
            if tc.get("id"):
                delta["id"] = tc["id"]
                delta["type"] = "function"
            function = {}
            if tc.get("name"):
                function["name"] = tc["name"]
            function["arguments"] = tc.get("args") or ""
            delta["function"] = function
            deltas.append(delta)
        return deltas

    def feed(self, chunk: AIMessageChunk) -> list[dict[str, Any]]:
        """Bodies to send for one LangChain chunk (possibly none)."""
        usage = chunk.usage_metadata or {}
        self._usage["input_tokens"] += int(usage.get("input_tokens", 0) or 0)
        self._usage["output_tokens"] += int(usage.get("output_tokens", 0) or 0)
        if chunk.response_metadata.get("finish_reason") is not None:
            self._finish_raw = chunk.response_metadata["finish_reason"]
        out = []
        text = str(chunk.text)
        if text:
            out.append(self._chunk({"content": text}))
        calls = self._tool_deltas(chunk)
        if calls:
            out.append(self._chunk({"tool_calls": calls}))
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The closing chunk (finish_reason) and, if asked for, the usage chunk."""
        out = [self._chunk({}, finish_reason(self._finish_raw, bool(self._tool_index)))]
        if self._include_usage:
            out.append({**self._base, "choices": [], "usage": usage_dict(self._usage)})
        return out


__all__ = [
    "ChatCompletionRequest", "ChunkWriter", "RequestError", "StreamOptions", "call_kwargs", "check_tools",
    "completion_body", "finish_reason", "merge_chunks", "message_chunk", "to_langchain_messages", "usage_dict",
]  # fmt: skip
