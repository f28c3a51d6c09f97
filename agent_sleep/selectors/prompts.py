"""``prompts``: put each episode's system prompt back in front of its conversation.

What an agent's model saw is not only the user and assistant turns the episode's events hold: most
agents add a system prompt when they call the model (the helpdesk demo adds Halvik's), and that
message lives in the recorded model input (:mod:`agent_sleep.store.conversation`), not in the graph's
state. A conversation trained without it teaches the model to answer in a prompt it never gets at
inference, and a probe asked without it measures a model the agent never runs: on the demo's
helpdesk, sft trained from the events alone moved 0 of 16 held-out rephrasings, trained on the same
conversations as the model saw them 9 to 12 of 16 (``evals/bench_demo_content.py``).

So this step reads the model input recorded for the episode's **final answer** (the last model call
that replied in text, else the last call) and, when that input starts with a system message and the
conversation does not, hands on a copy with that message first. Everything downstream then sees it:
redaction (keep this step before ``redact``), the ``sft`` conversations and the held-out probes
(:func:`agent_sleep.selectors.probes.episode_probe` keeps the system prompt with the question, and the
evaluate stage asks the question under it).

It never drops an episode. It is the one step that reads the store (``context.reader``): the model
calls of the episodes it is given, one query per batch (``model_calls_of``; a reader without it is
read episode by episode through ``events``). Put it after ``budget``, so that it reads at most
``max_episodes`` episodes, not every candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent_sleep.interfaces import Selection
from agent_sleep.selectors.base import EpisodeFilter, SelectorContext, SelectorParams, Verdict
from agent_sleep.selectors.candidates import Candidate, EpisodeCandidate

__all__ = ["PromptsParams", "PromptsSelector", "system_prompt_of"]


class PromptsParams(SelectorParams):
    max_chars: int = 8000  # a longer system prompt is left out (it would crowd the training window)


def system_prompt_of(calls: list[Any]) -> str | None:
    """The system prompt of the final answer's model call: the last call that replied with text (else
    the last call); None when that call's input is incomplete or does not start with a system message."""
    if not calls:
        return None
    answered = [c for c in calls if c.kind == "assistant_message" and (c.reply or "").strip()]
    call = answered[-1] if answered else calls[-1]
    if not call.complete or not call.messages:
        return None
    first = call.messages[0]
    if not isinstance(first, dict) or first.get("type") != "system":
        return None
    content = (first.get("data") or {}).get("content")
    return content if isinstance(content, str) and content.strip() else None


class PromptsSelector(EpisodeFilter):
    name = "prompts"
    Params = PromptsParams
    params: PromptsParams

    def __init__(self, params: SelectorParams, context: SelectorContext) -> None:
        super().__init__(params, context)
        self._calls: dict[str, list[Any]] = {}  # the model calls of the batch being judged, by episode id

    def select(self, items: Iterable[Candidate], /) -> Selection[Candidate]:
        items = list(items)
        self._calls = self._read([i.id for i in items if isinstance(i, EpisodeCandidate) and not _has_system(i)])
        try:
            return super().select(items)
        finally:
            self._calls = {}

    def _read(self, ids: list[str]) -> dict[str, list[Any]]:
        reader = self.context.reader
        if reader is None or not ids:
            return {}
        batch = getattr(reader, "model_calls_of", None)
        if callable(batch):
            return dict(batch(ids))
        from agent_sleep.store.conversation import model_calls

        return {i: model_calls(list(reader.events(i))) for i in ids}

    def judge(self, episode: EpisodeCandidate) -> Verdict:
        if _has_system(episode):
            return Verdict(True, "the conversation has its own system message")
        if self.context.reader is None:
            return Verdict(True, "no store to read the model's input from: the conversation as logged")
        system = system_prompt_of(self._calls.get(episode.id, []))
        if system is None:
            return Verdict(True, "no system prompt recorded for its final answer: the conversation as logged")
        if len(system) > self.params.max_chars:
            return Verdict(True, f"its system prompt ({len(system)} chars) is over max_chars "
                                 f"{self.params.max_chars}: left out")  # fmt: skip
        messages = ({"role": "system", "content": system}, *episode.messages)
        return Verdict(True, f"the system prompt of its final answer put first ({len(system)} chars)",
                       episode.replace(messages=messages))  # fmt: skip


def _has_system(episode: EpisodeCandidate) -> bool:
    return bool(episode.messages) and episode.messages[0].get("role") == "system"
