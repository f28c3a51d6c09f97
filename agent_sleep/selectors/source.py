"""Candidates from the experience store, streamed in batches: what the selector chain reads.

:func:`episode_candidates` yields an agent's unconsolidated episodes as
:class:`~agent_sleep.selectors.candidates.EpisodeCandidate` lists, oldest first. A store with
``episode_batches`` (both stores here) is paged by key with three queries a batch; any other
:class:`~agent_sleep.interfaces.ExperienceReader` is read through the Protocol (its episode list at
once, events and feedback per episode). :func:`document_candidates` gives the agent's new or changed
documents: each source's latest version, if it was not consolidated.

Events become chat messages (:func:`chat_messages`): user, assistant (with its tool calls), system
and tool results. Plumbing is left out: ``run_input``/``run_output`` (a graph's state),
``custom``, ``error``, ``interrupt``/``resume``. A ``tool_call`` event repeats a call its assistant
message already carries and is skipped then; on its own it becomes a call of that message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from agent_sleep.interfaces import ExperienceReader, FeedbackView
from agent_sleep.selectors.candidates import DocumentCandidate, EpisodeCandidate, FeedbackItem
from agent_sleep.store.batches import DEFAULT_BATCH_SIZE, EpisodeBundle, Turn, turn_of

__all__ = ["CHAT_KINDS", "chat_messages", "consolidated_references", "document_candidates", "episode_candidates"]

CHAT_KINDS = ("user_message", "assistant_message", "system_message", "tool_call", "tool_result")
_ROLES = {"user_message": "user", "assistant_message": "assistant", "system_message": "system"}


def episode_candidates(reader: ExperienceReader, agent: str, *, since: datetime | None = None,
                       batch_size: int = DEFAULT_BATCH_SIZE,
                       consolidated: bool = False) -> Iterator[list[EpisodeCandidate]]:  # fmt: skip
    """``agent``'s unconsolidated episodes (``consolidated``: only those a run consolidated instead), started
    at or after ``since``, ``batch_size`` at a time."""
    batches = getattr(reader, "episode_batches", None)
    if callable(batches):
        for batch in batches(agent, since=since, unconsolidated=not consolidated, consolidated=consolidated,
                             kinds=CHAT_KINDS, batch_size=batch_size):  # fmt: skip
            yield [_candidate(b) for b in batch]
        return
    records = [ep for ep in reader.episodes(agent=agent, unconsolidated=not consolidated, since=since)
               if not consolidated or ep.consolidated_at is not None]  # fmt: skip
    for start in range(0, len(records), batch_size):
        out = []
        for ep in records[start : start + batch_size]:
            turns = tuple(turn_of(e) for e in reader.events(ep.id) if e.kind in CHAT_KINDS)
            out.append(_candidate(EpisodeBundle(
                id=ep.id, agent=ep.agent, thread_id=ep.thread_id, started_at=ep.started_at, status=ep.status,
                outcome=ep.outcome, consolidated_at=ep.consolidated_at, turns=turns,
                feedback=tuple(reader.feedback(ep.id)),  # type: ignore[arg-type]
            )))  # fmt: skip
        yield out


def document_candidates(reader: ExperienceReader, agent: str) -> list[DocumentCandidate]:
    """``agent``'s new or changed documents: the latest version of each source, not yet consolidated."""
    return [
        DocumentCandidate(id=d.id, agent=d.agent, source=d.source, version=d.version, title=d.title, text=d.content,
                          created_at=d.created_at, meta=dict(d.meta), consolidated_at=d.consolidated_at)
        for d in reader.documents(agent=agent, latest_only=True, unconsolidated=True)
    ]  # fmt: skip


def _candidate(b: EpisodeBundle) -> EpisodeCandidate:
    return EpisodeCandidate(id=b.id, agent=b.agent, started_at=b.started_at, status=b.status, outcome=b.outcome,
                            messages=chat_messages(b.turns), feedback=tuple(_feedback(f) for f in b.feedback),
                            consolidated_at=b.consolidated_at)  # fmt: skip


def _feedback(f: FeedbackView) -> FeedbackItem:
    return FeedbackItem(id=f.id, score=f.score, label=f.label, comment=f.comment,
                        correction=getattr(f, "correction", None), source=f.source, created_at=f.created_at,
                        instruction=getattr(f, "instruction", None))  # a reader of an older schema has none


def chat_messages(turns: Iterable[Turn]) -> tuple[dict[str, Any], ...]:
    """Turns as chat messages ``{"role", "content"}``; assistant ones may carry ``"tool_calls"``
    ``[{"name", "arguments", "id"?}]``, tool results ``"name"`` and ``"tool_call_id"``."""
    out: list[dict[str, Any]] = []
    called: set[str] = set()  # ids of tool calls some assistant message carries
    for t in turns:
        if t.kind in _ROLES:
            msg: dict[str, Any] = {"role": _ROLES[t.kind], "content": t.content}
            calls = _calls(t.tool_calls) if t.tool_calls and t.kind == "assistant_message" else None
            if calls:
                msg["tool_calls"] = calls
                called.update(str(c["id"]) for c in calls if "id" in c)
            out.append(msg)
        elif t.kind == "tool_call":
            if t.tool_call_id is not None and str(t.tool_call_id) in called:
                continue  # the assistant message that made the call already carries it
            call: dict[str, Any] = {"name": t.name or "tool",
                                    "arguments": _arguments(t.args if t.args is not None else t.content)}
            if t.tool_call_id is not None:
                call["id"] = str(t.tool_call_id)
                called.add(call["id"])
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or not last["content"]):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif t.kind == "tool_result":
            msg = {"role": "tool", "content": t.content}
            if t.name:
                msg["name"] = t.name
            if t.tool_call_id is not None:
                msg["tool_call_id"] = str(t.tool_call_id)
            out.append(msg)
    return tuple(out)


def _calls(raw: Any) -> list[dict[str, Any]]:
    """Capture's ``[{"id", "name", "args"}]`` (or OpenAI's ``{"function": {"name", "arguments"}}``) as
    ``[{"name", "arguments", "id"?}]``; entries without a name are left out."""
    if not isinstance(raw, list):
        return []
    out = []
    for c in raw:
        if not isinstance(c, dict):
            continue
        fn = c["function"] if isinstance(c.get("function"), dict) else c
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            continue
        args = fn["args"] if "args" in fn else fn.get("arguments")
        call: dict[str, Any] = {"name": name, "arguments": dict(args) if isinstance(args, dict) else _arguments(args)}
        if c.get("id") is not None:
            call["id"] = str(c["id"])
        out.append(call)
    return out


def _arguments(value: Any) -> dict[str, Any]:
    """Tool-call arguments as a JSON object: a JSON text is parsed; anything else that is not an object
    (a tool's plain input string) becomes ``{"input": value}``."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError:
            return {"input": value}
    if value is None:
        return {}
    return dict(value) if isinstance(value, dict) else {"input": value}


def consolidated_references(reader: ExperienceReader, agent: str, *, since: datetime | None = None,
                            limit: int = 256) -> tuple[tuple[str, str], ...]:
    """What ``agent`` already consolidated, as ``(id, text)`` pairs for the novelty selector: its
    consolidated documents (latest versions) and its newest ``limit`` consolidated episodes, texts in
    the same shape as the candidates' (``EpisodeCandidate.text``), so similarities compare like with like."""
    docs = [(d.id, d.content) for d in reader.documents(agent=agent, latest_only=True) if d.consolidated_at]
    newest: list[tuple[str, str]] = []
    for batch in episode_candidates(reader, agent, since=since, consolidated=True):
        newest = (newest + [(c.id, c.text) for c in batch])[-limit:]
    return tuple(docs + newest)
