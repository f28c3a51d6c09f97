"""Chat formatting for local models: prompts with tools, and tool calls parsed and checked.

Two ways to put tools into a prompt, picked per tokenizer by :func:`supports_tools`:

* *native*: the chat template renders ``tools=`` itself (Qwen, Hermes, SmolLM3…);
  past calls go in as ``tool_calls`` and results as ``tool`` turns, as the
  template expects.
* *system prompt*: the template ignores ``tools=`` (SmolLM2's does: it is plain
  ChatML). The schemas go into the system message in the format SmolLM2-Instruct
  was fine-tuned on for function calling (Argilla's Synth-APIGen, see the
  SmolLM2-1.7B-Instruct model card): ``<tools>[...]</tools>``, answered with
  ``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>``. Such a model
  never saw tool-result turns, so a past call and its result are folded into
  one plain user message ("Tool x was called with {...} and returned: ...") and
  no call markup is left in the history for the model to copy.

Tool-call ids never reach a prompt: they live in the LangChain messages only.
:func:`parse_reply` turns a model's reply back into text and tool calls and
says what is wrong with it (bad JSON, unknown tool, arguments that do not fit
the schema, unterminated or stray markup); deciding what to do about it is the
chat model's job.
"""

from __future__ import annotations

import json
import re
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call

from agent_sleep.errors import InvalidInputError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
MARKUP_STARTS = ("<tool", "</tool")
"""How every piece of tool markup begins (``<tool_call>``, ``</tool_call>``, ``<tools>``, ``<tool_response>``...)."""
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)
_MARKUP = re.compile(r"</?tool[^\s<>]{0,40}>?")
# Used only when a tokenizer ships no chat template at all.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_PROBE = "agent_sleep_probe_7f3a"
_native_support: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _functions(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tool.get("function", tool) for tool in tools]


def markup_start(text: str) -> int:
    """Index of the first tool markup in ``text``, or -1."""
    match = _MARKUP.search(text)
    return match.start() if match else -1


def has_markup(text: str) -> bool:
    """Whether ``text`` holds any tool markup (a reply shown to a user never should)."""
    return markup_start(text) >= 0


# ---------------------------------------------------------------- templates


def apply_template(
    tokenizer: Any, chat: list[dict[str, Any]], add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render ``chat`` with the tokenizer's template (ChatML if it has none) as text."""
    template = None if getattr(tokenizer, "chat_template", None) else _CHATML
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template, **extra
    )


def supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders ``tools=`` and ``tool`` turns itself (checked once per tokenizer)."""
    cached = _native_support.get(tokenizer)
    if cached is not None:
        return cached
    probe = {"type": "function", "function": {"name": _PROBE, "description": "probe",
                                              "parameters": {"type": "object", "properties": {}}}}
    ok = False
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        try:
            ok = _PROBE in apply_template(tokenizer, [{"role": "user", "content": "x"}], tools=[probe])
        except Exception:  # templates reject what they do not know by raising whatever they like
            ok = False
    _native_support[tokenizer] = ok
    return ok


def format_tool_call(name: str, args: dict[str, Any]) -> str:
    """One call in the SmolLM2/APIGen syntax the system prompt asks for."""
    return TOOL_CALL_OPEN + json.dumps([{"name": name, "arguments": args}]) + TOOL_CALL_CLOSE


def render_tool_prompt(tools: Sequence[dict[str, Any]], tool_choice: str = "auto") -> str:
    """System-prompt text listing OpenAI-format ``tools`` and the call syntax (for templates without tools)."""
    functions = _functions(tools)
    # A concrete example from a real tool: small models copy placeholders like func_name1 verbatim.
    example = next((fn for fn in functions if fn.get("name") == tool_choice), functions[0]) if functions else {}
    example_args = {arg: "..." for arg in example.get("parameters", {}).get("properties", {})}
    lines = [
        "You have access to the following tools:",
        f"<tools>{json.dumps([{'type': 'function', 'function': fn} for fn in functions])}</tools>",
        "",
        "To call tools, reply with the calls only, as a JSON list in exactly this format:",
        format_tool_call(example.get("name", "tool_name"), example_args),
        "Tool results come back in later messages.",
    ]
    if tool_choice == "required":
        lines.append("You must call at least one tool now.")
    elif tool_choice != "auto":
        lines.append(f"You must call the tool {tool_choice} now.")
    else:
        lines.append("If no tool is needed, answer directly.")
    return "\n".join(lines)


def tool_call_prefill(tool_choice: str, *, native: bool) -> str:
    """The start of the answer that forces a call ('' for 'auto'): the model then only picks name or arguments."""
    if tool_choice == "auto":
        return ""
    start = TOOL_CALL_OPEN + ('{"name": "' if native else '[{"name": "')
    return start if tool_choice == "required" else f'{start[:-1]}{json.dumps(tool_choice)}, "arguments": '


# ---------------------------------------------------------------- messages


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [p if isinstance(p, str) else p.get("text", "") for p in content if isinstance(p, str | dict)]
    return "".join(parts)


def to_chat_dicts(messages: Sequence[BaseMessage], *, native_tools: bool = False) -> list[dict[str, Any]]:
    """LangChain messages as chat-template dicts, with no tool-call ids and (unless native) no call markup."""
    chat: list[dict[str, Any]] = []
    calls: dict[str, ToolCall] = {}
    for msg in messages:
        content = _text(msg.content)
        if isinstance(msg, SystemMessage):
            chat.append({"role": "system", "content": content})
        elif isinstance(msg, HumanMessage):
            chat.append({"role": "user", "content": content})
        elif isinstance(msg, AIMessage):
            calls.update({c.get("id") or "": c for c in msg.tool_calls})
            if native_tools and msg.tool_calls:
                fns = [{"type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                       for c in msg.tool_calls]
                chat.append({"role": "assistant", "content": content, "tool_calls": fns})
            elif content or not msg.tool_calls:
                chat.append({"role": "assistant", "content": content})
            # else: a call-only turn; the call is told together with its result below.
        elif isinstance(msg, ToolMessage | FunctionMessage):
            call = calls.get(getattr(msg, "tool_call_id", "") or "")
            name = msg.name or (call["name"] if call else "tool")
            if native_tools:
                chat.append({"role": "tool", "name": name, "content": content})
            elif call is not None:
                chat.append({"role": "user", "content": f"Tool {name} was called with {json.dumps(call['args'])} "
                                                        f"and returned:\n{content}"})
            else:
                chat.append({"role": "user", "content": f"Tool {name} returned:\n{content}"})
        elif isinstance(msg, ChatMessage):
            chat.append({"role": msg.role, "content": content})
        else:
            raise InvalidInputError(f"unsupported message type {type(msg).__name__}")
    return chat


def with_tool_prompt(chat: list[dict[str, Any]], tool_text: str) -> list[dict[str, Any]]:
    """``chat`` with ``tool_text`` appended to its system message (or as a new one)."""
    if chat and chat[0]["role"] == "system":
        return [{**chat[0], "content": f"{chat[0]['content']}\n\n{tool_text}"}, *chat[1:]]
    return [{"role": "system", "content": tool_text}, *chat]


def render_prompt(
    tokenizer: Any, messages: Sequence[BaseMessage], tools: list[dict[str, Any]], tool_choice: str = "auto"
) -> tuple[str, str]:
    """(prompt text ending where the answer starts, prefill that forces a call for non-'auto' choices)."""
    native = supports_tools(tokenizer)
    chat = to_chat_dicts(messages, native_tools=native)
    if not tools:
        return apply_template(tokenizer, chat, add_generation_prompt=True), ""
    prefill = tool_call_prefill(tool_choice, native=native)
    if native:
        return apply_template(tokenizer, chat, add_generation_prompt=True, tools=tools), prefill
    chat = with_tool_prompt(chat, render_tool_prompt(tools, tool_choice))
    return apply_template(tokenizer, chat, add_generation_prompt=True), prefill


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str:
    """LangChain/OpenAI tool_choice values as 'auto', 'none', 'required' or a tool name."""
    if tool_choice in (None, "auto", False):
        return "auto"
    if tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required", True):
        return "required"
    if isinstance(tool_choice, dict):
        tool_choice = tool_choice.get("function", tool_choice).get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise InvalidInputError(f"tool_choice {tool_choice!r} is not 'auto', 'none', 'any' or one of {list(names)}")


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class ParsedReply:
    """A model reply split into text and tool calls; ``errors`` empty means it may be shown as it is."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}  # fmt: skip


def check_args(value: Any, schema: dict[str, Any], path: str = "arguments") -> list[str]:
    """What is wrong with ``value`` under a JSON schema (type, enum, required, properties, items, anyOf)."""
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        found = [check_args(value, branch, path) for branch in branches]
        return [] if any(not f for f in found) else [f"{path} matches none of the allowed schemas"]
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        allowed = tuple(t for name in names for t in _JSON_TYPES.get(name, (object,)))
        is_bool = isinstance(value, bool)
        if not isinstance(value, allowed) or (is_bool and bool not in allowed):
            return [f"{path} should be {' or '.join(names)}, got {json.dumps(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path} should be one of {schema['enum']}, got {json.dumps(value)}"]
    errors: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path} misses required {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in props:
                errors += check_args(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path} has unknown {key!r}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += check_args(item, schema["items"], f"{path}[{i}]")
    return errors


def _decode_block(body: str) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The (name, arguments) pairs in one block, or the reason it holds none."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        return [], f"tool call is not valid JSON ({exc.msg}): {body.strip()[:80]}"
    items = obj if isinstance(obj, list) else [obj]
    pairs = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return [], f"tool call has no name: {json.dumps(item)[:80]}"
        args = item.get("arguments", item.get("parameters", item.get("args", {})))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return [], f"arguments of {item['name']} are not valid JSON"
        if not isinstance(args, dict):
            return [], f"arguments of {item['name']} are not a JSON object"
        pairs.append((item["name"], args))
    return pairs, None


def parse_reply(text: str, tools: Sequence[dict[str, Any]] = ()) -> ParsedReply:
    """Split a reply into text outside ``<tool_call>`` blocks and the calls inside, checked against ``tools``.

    A block may hold one call object or a list of them (``[]``: no call). Any
    other tool markup (an unterminated block, ``<tool_call_x>``, ``<tools>``) is
    an error, and so is every call when no tools are bound.
    """
    schemas = {fn.get("name"): fn.get("parameters") or {} for fn in _functions(tools)}
    calls: list[ToolCall] = []
    errors: list[str] = []
    kept: list[str] = []
    pos = 0
    for match in _BLOCK.finditer(text):
        kept.append(text[pos : match.start()])
        pos = match.end()
        pairs, problem = _decode_block(match.group(1))
        errors += [problem] if problem else []
        for name, args in pairs:
            if name not in schemas:
                known = f"tools are {sorted(schemas)}" if schemas else "no tools are bound"
                errors.append(f"unknown tool {name!r} ({known})")
                continue
            errors += [f"{name}: {e}" for e in check_args(args, {"type": "object", **schemas[name]})]
            calls.append(tool_call(name=name, args=args, id=f"call_{uuid.uuid4().hex[:24]}"))
    kept.append(text[pos:])
    outside = "".join(kept)
    stray = _MARKUP.search(outside)
    if stray:
        what = "unterminated tool call" if stray.group(0) == TOOL_CALL_OPEN else "stray tool markup"
        errors.append(f"{what} {stray.group(0)!r}")
    return ParsedReply(outside, calls, errors)
