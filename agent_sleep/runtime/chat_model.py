"""A LangChain chat model over the local transformers base model.

``ChatLocalModel`` is what agents talk to while awake. All model access goes
through two methods, :meth:`ChatLocalModel._pin` (which weights, tokenizer and
adapter stack, fixed once per request as a :class:`PinnedModel`) and
:meth:`ChatLocalModel._generate_ids` (the token loop), so a subclass can put a
live adapter stack in front of the base model without touching prompt
rendering, streaming, stop sequences or tool calls.

Tool calling is prompt-based (see :mod:`agent_sleep.runtime.chat_format`): the
bound tools reach the model through its chat template, or through the system
prompt when the template has no tools, and the model answers
``<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>``. Every reply is
checked before it is returned: a malformed call or stray markup is resampled a
bounded number of times, then replaced by a plain apology, so the content of an
``AIMessage`` from this model never holds tool markup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import copy
import json
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

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
    MARKUP_STARTS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ParsedReply,
    markup_start,
    normalize_tool_choice,
    parse_reply,
    render_prompt,
    render_tool_prompt,
    supports_tools,
    to_chat_dicts,
)

if TYPE_CHECKING:
    from agent_sleep.adapters.stack import PreparedStack

_GEN_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")
# Passed by agent frameworks for API models; meaningless for a local model.
_IGNORED_KWARGS = frozenset({"parallel_tool_calls", "strict", "ls_structured_output_format", "response_format"})
CANCEL_KWARG = "cancel_event"
"""Per-call argument: a ``threading.Event``; once set, generation stops before the next token."""
RETRY_TEMPERATURE = 0.7
FALLBACK_REPLY = "Sorry, I could not produce a valid answer to that."
"""The content of a reply whose every attempt held a malformed tool call or stray tool markup."""


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


@dataclass(frozen=True)
class PinnedModel:
    """What one request runs on, fixed when it starts: the shared model and, optionally, an adapter stack.

    ``bind(stack)`` makes ``stack`` apply to the forward passes run inside it, in
    the calling context only (the live runtime passes ``LoraHooks.activate``).
    """

    handle: BaseModelHandle
    stack: PreparedStack | None = None
    bind: Callable[[PreparedStack], AbstractContextManager[Any]] | None = None

    def bound(self) -> AbstractContextManager[Any]:
        """The stack bound around one decode step (nothing to bind: a no-op)."""
        if self.stack is None or self.bind is None:
            return contextlib.nullcontext()
        return self.bind(self.stack)


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
    retries: int = Field(default=2, ge=0)
    """How often a malformed reply (bad tool call, stray tool markup) is resampled before giving up."""
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
        """The model and tokenizer to run."""
        if self.handle is not None:
            return self.handle
        return load_base_model(self.model, device=self.device)

    def _pin(self, messages: Sequence[BaseMessage] = ()) -> PinnedModel:
        """What one request (``messages``) runs on, called once as it starts. Override to run on an adapter
        stack."""
        return PinnedModel(self._handle())

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
            # Grad mode is per-thread state: enter it per step, never across a yield
            # (a consumer may resume us on another thread).
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
        return render_prompt(handle.tokenizer, messages, tools, choice)

    def _retry_params(self, params: GenerationParams, attempt: int) -> GenerationParams:
        """Decoding for the ``attempt``-th resample: sampled, since greedy would repeat itself, and seeded
        (so reproducible) unless the call itself sampled without a seed."""
        if params.temperature > 0 and params.seed is None:
            return params
        return dataclasses.replace(
            params, temperature=params.temperature or RETRY_TEMPERATURE, seed=(params.seed or 0) + attempt
        )

    def _iter_chunks(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[AIMessageChunk]:
        """The whole call as chunks: text pieces, then one last chunk with tool calls and metadata.

        Text is streamed up to the first tool markup and held back from there.
        A reply that :func:`parse_reply` rejects is resampled from that point
        (``retries`` times); if none is acceptable the last chunk says so in
        plain words (:data:`FALLBACK_REPLY`) and the reasons go into
        ``response_metadata["invalid_output"]``: markup never reaches the content.
        """
        params, tools, choice = self._split_kwargs(dict(kwargs))
        pinned = self._pin(messages)
        handle = pinned.handle
        tokenizer = handle.tokenizer
        stops = [s for s in (stop or []) if s]
        markers = [*stops, *MARKUP_STARTS]
        eos = self._eos_ids(handle)
        problems: list[str] = []
        cancel = kwargs.get(CANCEL_KWARG)
        text, emitted, finish, n_in, n_out = "", 0, "length", 0, 0
        # The tokenizer is inside the lock too: a fast tokenizer used from two threads
        # at once can fail with "Already borrowed".
        with handle.lock:
            prompt, prefill = self._prompt(handle, messages, tools, choice)
            started = time.perf_counter()
            for attempt in range(self.retries + 1):
                # A retry continues after the text already streamed, so the chunks still add up.
                head = text[:emitted] if emitted else prefill
                input_ids = tokenizer(prompt + head, add_special_tokens=False)["input_ids"]
                attempt_params = self._fit_context(
                    handle, input_ids, params if attempt == 0 else self._retry_params(params, attempt)
                )
                n_in += len(input_ids)
                text, finish, generated = head, "length", []
                tokens = self._generate_ids(handle, input_ids, attempt_params)
                while True:
                    # The adapter stack is bound per context: around each step, never across our
                    # own yield (LangChain may resume this generator on another thread).
                    with pinned.bound():
                        token = next(tokens, None)
                    if token is None:
                        break
                    n_out += 1
                    if token in eos:
                        finish = "stop"
                        break
                    if cancel is not None and cancel.is_set():  # the caller gave up: free the lock now
                        finish = "cancelled"
                        break
                    generated.append(token)
                    # Decoding the whole tail each step keeps multi-byte characters and merges right.
                    text = head + tokenizer.decode(
                        generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
                    )
                    cuts = [i for i in (text.find(s, max(0, emitted - len(s))) for s in stops) if i >= 0]
                    if cuts:
                        text, finish = text[: min(cuts)], "stop"
                        break
                    if prefill and TOOL_CALL_CLOSE in text:  # a forced call is the whole answer
                        text, finish = text[: text.index(TOOL_CALL_CLOSE) + len(TOOL_CALL_CLOSE)], "stop"
                        break
                    visible = markup_start(text)
                    if visible >= 0 and not tools:
                        finish = "markup"  # markup without tools is wrong whatever follows
                        break
                    if visible < 0:
                        visible = len(text) - _holdback(text, markers)
                        if text[:visible].endswith("\ufffd"):  # a character still missing bytes
                            visible -= 1
                    if visible > emitted:
                        yield AIMessageChunk(content=text[emitted:visible])
                        emitted = visible
                if finish == "cancelled":  # nobody reads the rest: no check, no retry
                    cut = markup_start(text[emitted:])
                    parsed = ParsedReply(text=text[emitted:] if cut < 0 else text[emitted:][:cut])
                    break
                parsed = parse_reply(text[emitted:], tools)
                if not parsed.errors:
                    break
                problems.append("; ".join(parsed.errors))
                if finish == "length":  # cut off by the token budget: a retry would be cut off too
                    break
        seconds = time.perf_counter() - started

        metadata: dict[str, Any] = {}
        if parsed.errors and finish == "length":
            # Say what was cut, never the half-written markup: the caller sees finish_reason "length".
            cut = markup_start(text[emitted:])
            content, calls = (text[emitted:] if cut < 0 else text[emitted:][:cut]), []
            metadata["invalid_output"] = {"errors": problems, "last_output": text[emitted:][:500]}
        elif parsed.errors:
            sep = " " if emitted and not text[:emitted][-1].isspace() else ""
            content, calls, finish = sep + FALLBACK_REPLY, [], "invalid_output"
            metadata["invalid_output"] = {"errors": problems, "last_output": text[emitted:][:500]}
        else:
            content, calls = parsed.text, parsed.calls
            finish = "tool_calls" if calls else finish
        yield AIMessageChunk(
            content=content,
            tool_call_chunks=[
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                for i, c in enumerate(calls)
            ],
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
            response_metadata={
                "model": self.model,
                "model_name": self.model,
                "content_hash": handle.content_hash,
                "stack": pinned.stack.name if pinned.stack is not None else None,
                "finish_reason": finish,
                "attempts": attempt + 1,
                "seconds": round(seconds, 4),
                **metadata,
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
    "CANCEL_KWARG", "FALLBACK_REPLY", "TOOL_CALL_OPEN", "ChatLocalModel", "GenerationParams", "ParsedReply", "PinnedModel",
    "parse_reply", "render_tool_prompt", "supports_tools", "to_chat_dicts",
]  # fmt: skip
