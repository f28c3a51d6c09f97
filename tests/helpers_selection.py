"""Building blocks for the selection tests: candidates made by hand, and stores filled with episodes."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

from agent_sleep.selectors.candidates import DocumentCandidate, EpisodeCandidate, FeedbackItem

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
_ids = itertools.count()


def feedback(score: float | None = None, label: str | None = None, *, correction: str | None = None,
             comment: str | None = None, minutes: int = 0, fid: str | None = None) -> FeedbackItem:  # fmt: skip
    return FeedbackItem(id=fid or f"fb{next(_ids)}", score=score, label=label, comment=comment, correction=correction,
                        source="human", created_at=T0 + timedelta(minutes=minutes))  # fmt: skip


def episode(question: str = "Where is order A1?", answer: str | None = "It shipped on Monday.", *,
            eid: str | None = None, fb: tuple[FeedbackItem, ...] = (), status: str = "completed",
            outcome: str | None = None, days_ago: float = 1.0,
            extra: tuple[dict[str, Any], ...] = ()) -> EpisodeCandidate:
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    messages += extra
    return EpisodeCandidate(id=eid or f"ep{next(_ids)}", agent="helpdesk", started_at=T0 - timedelta(days=days_ago),
                            status=status, outcome=outcome, messages=tuple(messages), feedback=fb)  # fmt: skip


def document(source: str = "kb/returns.md", text: str = "Refunds take 5 business days.", *, did: str | None = None,
             days_ago: float = 1.0, meta: dict[str, Any] | None = None) -> DocumentCandidate:  # fmt: skip
    return DocumentCandidate(id=did or f"doc{next(_ids)}", agent="helpdesk", source=source, version=1, title=None,
                             text=text, created_at=T0 - timedelta(days=days_ago), meta=meta or {})  # fmt: skip


def log_episode(store: Any, question: str, answer: str | None, *, agent: str = "helpdesk", outcome: str | None = None,
                status: str = "completed", events: tuple[dict[str, Any], ...] = ()) -> str:  # fmt: skip
    """An episode in ``store`` (SQL or memory): the question, the answer (if any), more events, ended."""
    eid = store.start_episode(agent)
    evs = [{"kind": "user_message", "content": question}]
    if answer is not None:
        evs.append({"kind": "assistant_message", "content": answer})
    store.append_events(eid, [*evs, *events])
    if status != "running":
        store.end_episode(eid, status=status, outcome=outcome)
    return eid
