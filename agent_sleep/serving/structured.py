"""Replies that must have a shape: JSON for ``response_format``, a tool call for a forced ``tool_choice``.

A local model cannot be constrained while it decodes, so the shape is asked
for in the prompt, the finished reply is checked, and a wrong reply is asked
for again (a bounded number of attempts) with the reason it was wrong. A
request ends with a reply of the right shape or with an error that says why,
never with markup or half-written JSON in ``content``:

* cut off by the token budget (finish reason ``length``): 400 naming
  ``max_tokens`` at once, as the same budget would cut a retry too;
* still wrong after the last attempt: 422 naming ``response_format`` or
  ``tool_choice``, with the last reason.

Pure data handling plus one loop that calls a blocking ``attempt`` function;
the app runs it on a worker thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import add_usage

from agent_sleep.errors import APIError, RequestError
from agent_sleep.serving.json_schema import SchemaError, check_schema, schema_errors
from agent_sleep.serving.openai_format import finish_reason

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_MAX_SCANNED_STARTS = 32


class BadReply(Exception):
    """A finished reply without the required shape; the message says what is wrong."""


class ReplyCheck(Protocol):
    """What a reply must look like, and how to ask for it."""

    param: str
    """The request field that asked for the shape (named in the final error)."""

    def instruction(self) -> str | None:
        """Text added to the system prompt before the first attempt (None: nothing to add)."""
        ...

    def accept(self, message: AIMessage) -> AIMessage:
        """The reply as it should be answered, or :class:`BadReply`."""
        ...

    def retry_prompt(self, reason: str) -> str:
        """The user turn that asks again after a wrong reply."""
        ...


# ---------------------------------------------------------------- JSON replies


def extract_json(text: str) -> Any:
    """The JSON value in a reply: the whole text, a fenced code block, or the first object/array in prose."""
    stripped = text.strip()
    if not stripped:
        raise BadReply("the reply is empty")
    candidates = [stripped]
    fenced = _FENCE.search(stripped)
    if fenced:
        candidates.insert(0, fenced.group(1).strip())
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(stripped) if ch in "{["][:_MAX_SCANNED_STARTS]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(stripped, start)
        except ValueError:
            continue
        return value
    raise BadReply("the reply is not valid JSON")


@dataclass(frozen=True)
class JSONReply:
    """``response_format`` ``json_object`` (``schema`` None: any JSON object) or ``json_schema``."""

    schema: dict[str, Any] | bool | None = None
    name: str | None = None
    param: str = "response_format"

    def instruction(self) -> str:
        # Short: every word of it is in every attempt's prompt, and small models have small contexts.
        if self.schema is None:
            return "Reply with only a JSON object (no prose, no code fences)."
        schema = json.dumps(self.schema, ensure_ascii=False, separators=(",", ":"))
        return f"Reply with only JSON matching this schema (no prose, no code fences):\n{schema}"

    def accept(self, message: AIMessage) -> AIMessage:
        if message.tool_calls:  # with tools offered, a tool call is a valid turn; the final answer is checked
            return message
        value = extract_json(str(message.text))
        if self.schema is None:
            if not isinstance(value, dict):
                raise BadReply(f"the reply is JSON but not an object (got {type(value).__name__})")
        else:
            errors = schema_errors(value, self.schema)
            if errors:
                raise BadReply("; ".join(errors))
        return message.model_copy(update={"content": json.dumps(value, ensure_ascii=False)})

    def retry_prompt(self, reason: str) -> str:
        return f"Invalid: {reason}. Reply with only the JSON."


# ---------------------------------------------------------------- forced tool calls


@dataclass(frozen=True)
class ToolCallReply:
    """A forced ``tool_choice``: a call of ``name`` (None: of any offered tool, for 'required')."""

    name: str | None = None
    param: str = "tool_choice"

    def instruction(self) -> None:
        return None  # the tool prompt already demands the call

    def accept(self, message: AIMessage) -> AIMessage:
        if not message.tool_calls:
            raise BadReply("the reply holds no complete tool call")
        wrong = sorted({c["name"] for c in message.tool_calls if self.name is not None and c["name"] != self.name})
        if wrong:
            raise BadReply(f"the reply calls {wrong} instead of {self.name!r}")
        return message

    def retry_prompt(self, reason: str) -> str:
        which = f"the tool {self.name}" if self.name else "one of the tools"
        return f"Invalid: {reason}. Reply with only a call of {which}, in the format shown."


# ---------------------------------------------------------------- from a request


def reply_check(response_format: dict[str, Any] | None, forced_tool: Any = None) -> ReplyCheck | None:
    """The check a request asks for (None: any reply goes); raises :class:`RequestError` for a bad ``response_format``.

    ``forced_tool`` is the checked ``tool_choice`` when tools are offered:
    'required' or ``{"type": "function", "function": {"name": ...}}`` force a
    call and take precedence over ``response_format``.
    """
    check = _json_check(response_format)
    if forced_tool == "required":
        return ToolCallReply()
    if isinstance(forced_tool, dict):
        return ToolCallReply(forced_tool["function"]["name"])
    return check


def _json_check(response_format: dict[str, Any] | None) -> JSONReply | None:
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSONReply()
    if kind != "json_schema":
        raise RequestError(
            f"response_format type {kind!r} is not supported (use 'text', 'json_object' or 'json_schema')",
            "response_format.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError(
            "response_format.json_schema must be an object like {'name': ..., 'schema': {...}}",
            "response_format.json_schema",
        )
    schema = spec.get("schema", {})
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise RequestError(f"response_format.json_schema.{exc}", "response_format.json_schema.schema") from None
    name = spec.get("name") if isinstance(spec.get("name"), str) else None
    return JSONReply(schema=schema, name=name)


def with_instruction(messages: Sequence[BaseMessage], instruction: str | None) -> list[BaseMessage]:
    """``messages`` with ``instruction`` appended to the leading system message (or a new one first)."""
    if not instruction:
        return list(messages)
    if messages and isinstance(messages[0], SystemMessage):
        first = messages[0]
        text = str(first.text)
        merged = first.model_copy(update={"content": f"{text}\n\n{instruction}" if text else instruction})
        return [merged, *messages[1:]]
    return [SystemMessage(content=instruction), *messages]


# ---------------------------------------------------------------- the loop


def generate_checked(
    attempt: Callable[[list[BaseMessage]], AIMessage | None],
    messages: Sequence[BaseMessage],
    check: ReplyCheck,
    *,
    attempts: int,
    budget_param: str = "max_tokens",
) -> AIMessage | None:
    """Call ``attempt`` until ``check`` accepts its reply; None when an attempt was cancelled (returned None).

    The accepted reply reports the usage of all attempts together. Raises
    :class:`APIError` 400 (``budget_param``) for a reply cut off by the token
    budget and 422 (``check.param``) when the last attempt is still wrong.
    """
    history: list[BaseMessage] = list(messages)
    usage = None
    reason = "no attempt was made"
    for _ in range(attempts):
        message = attempt(history)
        if message is None:
            return None
        usage = add_usage(usage, message.usage_metadata) if message.usage_metadata else usage
        try:
            accepted = check.accept(message)
        except BadReply as bad:
            reason = str(bad)
            if finish_reason(message.response_metadata.get("finish_reason"), False) == "length":
                used = (message.usage_metadata or {}).get("output_tokens")
                budget = f" after {used} tokens" if used else ""
                raise APIError(
                    400,
                    f"the reply was cut off{budget} before it was complete ({reason}); raise {budget_param}",
                    param=budget_param,
                    code="max_tokens_too_small",
                ) from None
            # Only the latest wrong reply goes back: the prompt stays bounded however many attempts.
            history = [*messages, AIMessage(content=str(message.text)), HumanMessage(content=check.retry_prompt(reason))]
            continue
        return accepted.model_copy(update={"usage_metadata": usage})
    what = "a call of the forced tool" if isinstance(check, ToolCallReply) else "JSON matching response_format"
    raise APIError(
        422,
        f"the model did not produce {what} in {attempts} attempt(s): {reason}",
        param=check.param,
        code="invalid_model_output",
    )


__all__ = [
    "BadReply", "JSONReply", "ReplyCheck", "ToolCallReply", "extract_json", "generate_checked", "reply_check",
    "with_instruction",
]  # fmt: skip
