"""Chat formatting for local models: messages to chat-template dicts, and tool calls as text.

Local models have no tool-calling API, so tools travel in the prompt: their
JSON schemas are rendered into the system message, and the model answers
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks that
:func:`parse_tool_calls` turns back into LangChain tool calls.
"""

from __future__ import annotations

import json
import re
import uuid
import weakref
from collections.abc import Sequence
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
_TOOL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)
# Used only when a tokenizer ships no chat template at all.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_tool_role_support: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def render_tool_prompt(tools: Sequence[dict[str, Any]], tool_choice: str = "auto") -> str:
    """System-prompt text describing OpenAI-format ``tools`` and the call syntax."""
    functions = [tool.get("function", tool) for tool in tools]
    lines = ["You can call these tools (JSON schemas):"]
    lines += [json.dumps({k: fn[k] for k in ("name", "description", "parameters") if k in fn}) for fn in functions]
    # A concrete example from a real tool: small models copy placeholders like TOOL_NAME verbatim.
    example = next((fn for fn in functions if fn.get("name") == tool_choice), functions[0]) if functions else {}
    example_args = {arg: "..." for arg in example.get("parameters", {}).get("properties", {})}
    lines += [
        "",
        "To call a tool, reply with one block per call, exactly like this:",
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


def format_tool_call(name: str, args: dict[str, Any]) -> str:
    """One call in the block syntax the model is asked to write."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": args}) + TOOL_CALL_CLOSE


def _decode_call(body: str) -> tuple[str, dict[str, Any]] | None:
    body = body.strip()
    try:
        # raw_decode tolerates trailing junk after the object, which small models often add.
        obj, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", obj.get("args", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], args


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split model output into (text outside tool-call blocks, parsed tool calls).

    A block that does not hold a valid call stays in the text, so nothing the
    model wrote is lost silently. An unclosed final block (output cut off) is
    parsed if its JSON is complete.
    """
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for match in _TOOL_BLOCK.finditer(text):
        decoded = _decode_call(match.group(1))
        kept.append(text[pos : match.start()])
        if decoded is None:
            kept.append(match.group(0))
        else:
            calls.append(tool_call(name=decoded[0], args=decoded[1], id=f"call_{uuid.uuid4().hex[:24]}"))
        pos = match.end()
    kept.append(text[pos:])
    return "".join(kept), calls


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


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [p if isinstance(p, str) else p.get("text", "") for p in content if isinstance(p, str | dict)]
    return "".join(parts)


def supports_tool_role(tokenizer: Any) -> bool:
    """Whether the chat template knows a ``tool`` role (checked once per tokenizer).

    Generic ChatML templates (SmolLM2's among them) print any role name, but a
    model never trained on ``tool`` turns reads tool results better as user
    text, so the template must also mention "tool" itself.
    """
    cached = _tool_role_support.get(tokenizer)
    if cached is not None:
        return cached
    template = getattr(tokenizer, "chat_template", None)
    ok = False
    if isinstance(template, str) and "tool" in template:
        marker = "agent-sleep-probe-7f3a"
        try:
            chat = [{"role": "user", "content": "x"}, {"role": "tool", "content": marker}]
            ok = marker in apply_template(tokenizer, chat)
        except Exception:  # templates reject unknown roles by raising whatever they like
            ok = False
    _tool_role_support[tokenizer] = ok
    return ok


def apply_template(tokenizer: Any, chat: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Render ``chat`` with the tokenizer's template (ChatML if it has none) as text."""
    template = None if getattr(tokenizer, "chat_template", None) else _CHATML
    return tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )


def to_chat_dicts(messages: Sequence[BaseMessage], *, tool_role: bool = True) -> list[dict[str, Any]]:
    """LangChain messages as chat-template dicts; tool calls are written in our block syntax."""
    chat: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for msg in messages:
        content = _text(msg.content)
        if isinstance(msg, SystemMessage):
            chat.append({"role": "system", "content": content})
        elif isinstance(msg, HumanMessage):
            chat.append({"role": "user", "content": content})
        elif isinstance(msg, AIMessage):
            blocks = []
            for call in msg.tool_calls:
                call_names[call.get("id") or ""] = call["name"]
                blocks.append(format_tool_call(call["name"], call["args"]))
            chat.append({"role": "assistant", "content": "\n".join([content, *blocks]).strip()})
        elif isinstance(msg, ToolMessage | FunctionMessage):
            call_id = getattr(msg, "tool_call_id", "")
            name = msg.name or call_names.get(call_id, "tool")
            if tool_role:
                chat.append({"role": "tool", "content": content, "name": name, "tool_call_id": call_id})
            else:
                label = f"{name} (call {call_id})" if call_id else name
                chat.append({"role": "user", "content": f"Result of tool {label}:\n{content}"})
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
