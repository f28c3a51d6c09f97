"""A LangChain chat model over the local transformers base model.

``ChatLocalModel`` is what agents talk to while awake. All model access goes
through two methods, :meth:`ChatLocalModel._handle` (which weights and
tokenizer) and :meth:`ChatLocalModel._generate_ids` (the token loop), so a
subclass can put a live adapter stack in front of the base model without
touching prompt rendering, streaming, stop sequences or tool calls.

Tool calling is prompt-based (see :mod:`agent_sleep.runtime.chat_format`): the
bound tools' JSON schemas go into the system prompt and the model answers
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, model_validator

from agent_sleep.config import DEFAULT_MODEL
from agent_sleep.errors import InvalidInputError
from agent_sleep.models.loader import BaseModelHandle, load_base_model
from agent_sleep.runtime.chat_format import (
    TOOL_CALL_OPEN,
    apply_template,
    normalize_tool_choice,
    parse_tool_calls,
    render_tool_prompt,
    supports_tool_role,
    to_chat_dicts,
    with_tool_prompt,
)

_GEN_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")
# Passed by agent frameworks for API models; meaningless for a local model.
_IGNORED_KWARGS = frozenset({"parallel_tool_calls", "strict", "ls_structured_output_format", "response_format"})
CANCEL_KWARG = "cancel_event"
"""Per-call argument: a ``threading.Event``; once set, generation stops before the next token."""


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings for one call (the model's fields plus per-call overrides)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    seed: int | None


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


def _stack_bound(handle: BaseModelHandle) -> Any:
    """Bind the request's pinned adapter stack (if any) around one forward pass."""
    if handle.stack is None or handle.activate is None:
        return contextlib.nullcontext()
    return handle.activate(handle.stack)


class ChatLocalModel(BaseChatModel):
    """Chat model running a local base model (default: SmolLM2-135M-Instruct).

    ``temperature=0`` decodes greedily, so ``invoke`` and the concatenated
    chunks of ``stream`` give the same text. Generation is serialised by the
    shared handle's lock, so threads can share one instance; a callback must
    not call the same model from inside its own generation (it would wait on
    that lock forever).
    """

    supports_cancel_event: ClassVar[bool] = True
    """Calls accept ``cancel_event`` (see :data:`CANCEL_KWARG`)."""

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
            # Grad mode and the active adapter stack are per-thread/context state: enter
            # them per step, never across a yield (a consumer may resume us elsewhere).
            with torch.inference_mode(), _stack_bound(handle):
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
        unknown = set(kwargs) - _IGNORED_KWARGS - {CANCEL_KWARG}
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

    def _fit_context(self, handle: BaseModelHandle, input_ids: list[int], params: GenerationParams) -> GenerationParams:
        limit = getattr(handle.model.config, "max_position_embeddings", None)
        if limit is None:
            return params
        if len(input_ids) >= limit:
            raise InvalidInputError(f"prompt of {len(input_ids)} tokens does not fit the model's context of {limit}")
        return dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, limit - len(input_ids)))

    def _prompt(
        self, handle: BaseModelHandle, messages: Sequence[BaseMessage], tools: list[dict[str, Any]], choice: str
    ) -> tuple[str, str]:
        """(rendered prompt, prefill). The prefill starts the answer to force a tool call."""
        chat = to_chat_dicts(messages, tool_role=supports_tool_role(handle.tokenizer))
        prefill = ""
        if tools:
            chat = with_tool_prompt(chat, render_tool_prompt(tools, choice))
            if choice == "required":
                prefill = TOOL_CALL_OPEN + '{"name": "'  # the model only has to pick the name
            elif choice != "auto":
                prefill = TOOL_CALL_OPEN + json.dumps({"name": choice})[:-1] + ', "arguments": '
        return apply_template(handle.tokenizer, chat, add_generation_prompt=True), prefill

    def _iter_chunks(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[AIMessageChunk]:
        """The whole call as chunks: text pieces, then one last chunk with tool calls and metadata."""
        params, tools, choice = self._split_kwargs(dict(kwargs))
        handle = self._handle()
        tokenizer = handle.tokenizer
        stops = [s for s in (stop or []) if s]
        markers = [*stops, TOOL_CALL_OPEN] if tools else stops
        eos = self._eos_ids(handle)
        generated: list[int] = []
        cancel = kwargs.get(CANCEL_KWARG)
        text, emitted, finish, produced = "", 0, "length", 0
        # The tokenizer is inside the lock too: a fast tokenizer used from two threads
        # at once can fail with "Already borrowed".
        with handle.lock:
            prompt, prefill = self._prompt(handle, messages, tools, choice)
            input_ids = tokenizer(prompt + prefill, add_special_tokens=False)["input_ids"]
            params = self._fit_context(handle, input_ids, params)
            text = prefill
            started = time.perf_counter()
            for token in self._generate_ids(handle, input_ids, params):
                produced += 1
                if token in eos:
                    finish = "stop"
                    break
                if cancel is not None and cancel.is_set():  # the caller gave up: free the lock now
                    finish = "cancelled"
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
                "model": self.model,
                "model_name": self.model,
                "content_hash": handle.content_hash,
                "stack": getattr(handle.stack, "name", None),
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
        choice = normalize_tool_choice(tool_choice, names)
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def check_prompt(
        self, messages: Sequence[BaseMessage], *, tools: Sequence[Any] = (), tool_choice: Any = None
    ) -> None:
        """Raise :class:`InvalidInputError` if the prompt cannot fit the model's context, without the model lock.

        A server calls this before queueing a request, so an oversized prompt is
        rejected at once instead of being tokenised while others wait for the
        lock. It renders the prompt like a call would and counts tokens with a
        private copy of the tokenizer (a fast tokenizer must not be used by two
        threads at once). A prompt with fewer UTF-8 bytes than the context
        cannot have more tokens than that, so it is not tokenised at all.
        """
        handle = self._handle()
        limit = getattr(handle.model.config, "max_position_embeddings", None)
        if limit is None:
            return
        formatted = [convert_to_openai_tool(t) for t in tools]
        choice = normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted]) if formatted else "auto"
        prompt, prefill = self._prompt(handle, messages, formatted if choice != "none" else [], choice)
        text = prompt + prefill
        if len(text.encode("utf-8")) < limit:
            return
        tokenizer, lock = _private_tokenizer(handle.tokenizer)
        with lock:
            count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if count >= limit:
            raise InvalidInputError(f"prompt of {count} tokens does not fit the model's context of {limit}")


_private_tokenizers: weakref.WeakKeyDictionary[Any, tuple[Any, threading.Lock]] = weakref.WeakKeyDictionary()
_private_tokenizers_lock = threading.Lock()


def _private_tokenizer(tokenizer: Any) -> tuple[Any, threading.Lock]:
    """A copy of ``tokenizer`` (and a lock for it) that generation never touches."""
    with _private_tokenizers_lock:
        entry = _private_tokenizers.get(tokenizer)
        if entry is None:
            entry = (copy.deepcopy(tokenizer), threading.Lock())
            _private_tokenizers[tokenizer] = entry
        return entry



__all__ = [
    "CANCEL_KWARG", "TOOL_CALL_OPEN", "ChatLocalModel", "GenerationParams", "parse_tool_calls", "render_tool_prompt",
    "supports_tool_role", "to_chat_dicts",
]  # fmt: skip
