"""A LangChain chat model over the local transformers base model.

``ChatLocalModel`` is what agents talk to while awake. All model access goes
through two methods, :meth:`ChatLocalModel._handle` (which weights and
tokenizer) and :meth:`ChatLocalModel._generate_ids` (the token loop), so a
subclass can put a live adapter stack in front of the base model without
touching prompt rendering, streaming, stop sequences or tool calls.

Tool calling is prompt-based: the bound tools' JSON schemas go into the system
prompt and the model answers ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, model_validator

from agent_sleep.config import DEFAULT_MODEL
from agent_sleep.errors import InvalidInputError
from agent_sleep.models.loader import BaseModelHandle, load_base_model

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_TOOL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)
# Used only when a tokenizer ships no chat template at all.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GEN_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")
# Passed by agent frameworks for API models; meaningless for a local model.
_IGNORED_KWARGS = frozenset({"parallel_tool_calls", "strict", "ls_structured_output_format", "response_format"})
_tool_role_support: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings for one call (the model's fields plus per-call overrides)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int | None


# ---------------------------------------------------------------- tools: prompt and parsing


def render_tool_prompt(tools: Sequence[dict[str, Any]], tool_choice: str = "auto") -> str:
    """System-prompt text describing OpenAI-format ``tools`` and the call syntax."""
    lines = ["You can call these tools (JSON schemas):"]
    for tool in tools:
        fn = tool.get("function", tool)
        lines.append(json.dumps({k: fn[k] for k in ("name", "description", "parameters") if k in fn}))
    lines += [
        "",
        "To call a tool, reply with one block per call, exactly like this:",
        TOOL_CALL_OPEN + '{"name": "TOOL_NAME", "arguments": {"ARGUMENT": "VALUE"}}' + TOOL_CALL_CLOSE,
        "Tool results come back in later messages.",
    ]
    if tool_choice == "required":
        lines.append("You must call at least one tool now.")
    elif tool_choice != "auto":
        lines.append(f"You must call the tool {tool_choice} now.")
    else:
        lines.append("If no tool is needed, answer directly.")
    return "\n".join(lines)


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


def _normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str:
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


# ---------------------------------------------------------------- messages -> chat template


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
            ok = marker in _apply_template(tokenizer, chat)
        except Exception:  # templates reject unknown roles by raising whatever they like
            ok = False
    _tool_role_support[tokenizer] = ok
    return ok


def _apply_template(tokenizer: Any, chat: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
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
                blocks.append(TOOL_CALL_OPEN + json.dumps({"name": call["name"], "arguments": call["args"]}) + TOOL_CALL_CLOSE)
            chat.append({"role": "assistant", "content": "\n".join([content, *blocks]).strip()})
        elif isinstance(msg, ToolMessage | FunctionMessage):
            call_id = getattr(msg, "tool_call_id", "")
            name = msg.name or call_names.get(call_id, "tool")
            if tool_role:
                chat.append({"role": "tool", "content": content, "name": name, "tool_call_id": call_id})
            else:
                chat.append({"role": "user", "content": f"Result of tool {name} (call {call_id}):\n{content}"})
        elif isinstance(msg, ChatMessage):
            chat.append({"role": msg.role, "content": content})
        else:
            raise InvalidInputError(f"unsupported message type {type(msg).__name__}")
    return chat


def _with_tool_prompt(chat: list[dict[str, Any]], tool_text: str) -> list[dict[str, Any]]:
    if chat and chat[0]["role"] == "system":
        return [{**chat[0], "content": f"{chat[0]['content']}\n\n{tool_text}"}, *chat[1:]]
    return [{"role": "system", "content": tool_text}, *chat]


def _cache_kwarg(model: Any) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; older releases lack ``cache``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _holdback(text: str, markers: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a marker."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


# ---------------------------------------------------------------- the chat model


class ChatLocalModel(BaseChatModel):
    """Chat model running a local base model (default: SmolLM2-135M-Instruct).

    ``temperature=0`` decodes greedily, so ``invoke`` and the concatenated
    chunks of ``stream`` give the same text. Generation is serialised by the
    shared handle's lock, so threads can share one instance.
    """

    model: str = DEFAULT_MODEL
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    seed: int | None = None
    device: str | None = None
    handle: Any = Field(default=None, exclude=True, repr=False)
    """An already-loaded :class:`BaseModelHandle`; when set, ``model`` is only a label."""

    @model_validator(mode="after")
    def _check_handle(self) -> ChatLocalModel:
        if self.handle is not None and not isinstance(self.handle, BaseModelHandle):
            raise InvalidInputError(f"handle must be a BaseModelHandle, not {type(self.handle).__name__}")
        return self

    @property
    def _llm_type(self) -> str:
        return "agent-sleep-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **{name: getattr(self, name) for name in _GEN_FIELDS}}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="agent-sleep", ls_model_name=self.model, ls_model_type="chat")
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_new_tokens", self.max_new_tokens)
        if stop:
            params["ls_stop"] = stop
        return params

    # -- override points ------------------------------------------------------

    def _handle(self) -> BaseModelHandle:
        """The model and tokenizer to run. Override to serve an adapted model."""
        if self.handle is not None:
            return self.handle
        return load_base_model(self.model, device=self.device)

    def _generate_ids(self, handle: BaseModelHandle, input_ids: list[int], params: GenerationParams) -> Iterator[int]:
        """Yield new token ids one at a time; the caller stops consuming at EOS or a stop sequence.

        A token loop rather than ``model.generate`` so that a consumer that
        stops early stops the computation too (no background thread).
        """
        import torch
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

        model = handle.model
        cache_kwarg = _cache_kwarg(model)
        processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        sample = params.temperature > 0
        generator = None
        if sample:
            processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
            generator = torch.Generator(device=handle.device)
            if params.seed is None:
                generator.seed()
            else:
                generator.manual_seed(params.seed)
        all_ids = torch.tensor([input_ids], dtype=torch.long, device=handle.device)
        step_ids, past = all_ids, None
        for _ in range(params.max_new_tokens):
            # Grad mode is thread-local global state: enter it per step, never across a yield.
            with torch.inference_mode():
                out = model(input_ids=step_ids, use_cache=True, **{cache_kwarg: past})
                past = out.cache if cache_kwarg == "cache" else out.past_key_values
                logits = processors(all_ids, out.logits[:, -1, :].float())
                if sample:
                    next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
                else:
                    next_id = logits.argmax(dim=-1, keepdim=True)
                all_ids = torch.cat([all_ids, next_id], dim=-1)
                step_ids = next_id
            yield int(next_id)

    # -- plumbing ---------------------------------------------------------------

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[GenerationParams, list[dict[str, Any]], str]:
        values = {name: kwargs.pop(name, getattr(self, name)) for name in _GEN_FIELDS}
        tools = list(kwargs.pop("tools", None) or [])
        choice = kwargs.pop("tool_choice", None) or "auto"
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            warnings.warn(f"ChatLocalModel ignores unknown arguments {sorted(unknown)}", stacklevel=4)
        if choice == "none":
            tools = []
        return GenerationParams(**values), tools, choice

    def _eos_ids(self, handle: BaseModelHandle) -> set[int]:
        ids = {handle.tokenizer.eos_token_id}
        configured = getattr(handle.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    def _prompt(
        self, handle: BaseModelHandle, messages: Sequence[BaseMessage], tools: list[dict[str, Any]], choice: str
    ) -> tuple[str, str]:
        """(rendered prompt, prefill). The prefill starts the answer to force a tool call."""
        chat = to_chat_dicts(messages, tool_role=supports_tool_role(handle.tokenizer))
        prefill = ""
        if tools:
            chat = _with_tool_prompt(chat, render_tool_prompt(tools, choice))
            if choice == "required":
                prefill = TOOL_CALL_OPEN
            elif choice != "auto":
                prefill = TOOL_CALL_OPEN + json.dumps({"name": choice})[:-1] + ', "arguments": '
        return _apply_template(handle.tokenizer, chat, add_generation_prompt=True), prefill

    def _iter_chunks(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[AIMessageChunk]:
        """The whole call as chunks: text pieces, then one last chunk with tool calls and metadata."""
        params, tools, choice = self._split_kwargs(dict(kwargs))
        handle = self._handle()
        tokenizer = handle.tokenizer
        prompt, prefill = self._prompt(handle, messages, tools, choice)
        input_ids = tokenizer(prompt + prefill, add_special_tokens=False)["input_ids"]
        limit = getattr(handle.model.config, "max_position_embeddings", None)
        if limit is not None:
            if len(input_ids) >= limit:
                raise InvalidInputError(f"prompt of {len(input_ids)} tokens does not fit the model's context of {limit}")
            params = GenerationParams(**{**params.__dict__, "max_new_tokens": min(params.max_new_tokens, limit - len(input_ids))})
        stops = [s for s in (stop or []) if s]
        markers = [*stops, TOOL_CALL_OPEN] if tools else stops
        eos = self._eos_ids(handle)

        started = time.perf_counter()
        generated: list[int] = []
        text, emitted, finish, produced = prefill, 0, "length", 0
        with handle.lock:
            for token in self._generate_ids(handle, input_ids, params):
                produced += 1
                if token in eos:
                    finish = "stop"
                    break
                generated.append(token)
                # Decoding the whole tail each step keeps multi-byte characters and merges right.
                text = prefill + tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                cuts = [i for i in (text.find(s, max(0, emitted - len(s))) for s in stops) if i >= 0]
                if cuts:
                    text, finish = text[: min(cuts)], "stop"
                    break
                visible = text.find(TOOL_CALL_OPEN) if tools and TOOL_CALL_OPEN in text else len(text)
                if visible == len(text):
                    visible -= _holdback(text, markers)
                    if text[:visible].endswith("\ufffd"):  # a character still missing bytes
                        visible -= 1
                if visible > emitted:
                    yield AIMessageChunk(content=text[emitted:visible])
                    emitted = visible
        seconds = time.perf_counter() - started

        rest, calls = parse_tool_calls(text[emitted:]) if tools else (text[emitted:], [])
        if calls:
            finish = "tool_calls"
        yield AIMessageChunk(
            content=rest,
            tool_call_chunks=[
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                for i, c in enumerate(calls)
            ],
            usage_metadata={
                "input_tokens": len(input_ids),
                "output_tokens": produced,
                "total_tokens": len(input_ids) + produced,
            },
            response_metadata={
                "model": handle.spec,
                "model_name": handle.spec,
                "content_hash": handle.content_hash,
                "finish_reason": finish,
                "seconds": round(seconds, 4),
            },
            chunk_position="last",
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._iter_chunks(messages, stop, kwargs):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None and chunk.content:
                run_manager.on_llm_new_token(chunk.text, chunk=generation)
            yield generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # invoke is the sum of the stream, so the two can never disagree.
        chunks = [g.message for g in self._stream(messages, stop, run_manager, **kwargs)]
        merged = chunks[0] if len(chunks) == 1 else chunks[0] + chunks[1:]
        message = AIMessage(
            content=merged.content,
            tool_calls=merged.tool_calls,
            usage_metadata=merged.usage_metadata,
            response_metadata=merged.response_metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice`` is 'auto', 'none', 'any'/'required' or a tool name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        choice = _normalize_tool_choice(tool_choice, names)
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

