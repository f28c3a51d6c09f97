"""The capture front door: turn agent activity into store ops, off the hot path.

``ExperienceRecorder`` numbers events per episode, converts LangChain messages
to events, enforces the payload cap (capture truncates and marks oversized
content rather than break the agent) and hands ops to the shared background
writer. Both the LangChain callback handler and the ``create_agent`` middleware
are thin layers over it.

What is costly to turn into JSON (a model call's input, a graph's state) is
queued as a reference and finished on the writer thread
(:mod:`agent_sleep.capture.deferred`). A run that continues an episode (a
resumed graph, or a process logging to an episode it did not start) numbers its
events from 0 and the store places them after the episode's last event
(:mod:`agent_sleep.store.ops`).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent_sleep.capture.deferred import DEFER, ModelInput
from agent_sleep.capture.writer import BackgroundWriter, CaptureWarning, shared_writer
from agent_sleep.config import Settings, get_settings
from agent_sleep.names import check_agent_name
from agent_sleep.store.models import new_id
from agent_sleep.store.ops import Op
from agent_sleep.store.records import normalize_episode_id

_ROLE_TO_KIND = {
    "human": "user_message",
    "user": "user_message",
    "ai": "assistant_message",
    "assistant": "assistant_message",
    "system": "system_message",
    "tool": "tool_result",
}


def _text_of(content: Any) -> str:
    """Message content as text: LangChain content may be a list of typed blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return "" if content is None else str(content)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_text(text: str) -> str:
    # Lone surrogates (from undecodable bytes) cannot be stored as UTF-8; capture
    # must not fail the agent over them, so they become U+FFFD.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def message_to_event(message: Any) -> dict[str, Any]:
    """A LangChain message (object, dict or (role, text) tuple) as event fields."""
    if isinstance(message, tuple) and len(message) == 2:
        role, content = message
        return {"kind": _ROLE_TO_KIND.get(role, "custom"), "content": _text_of(content), "payload": {"role": role}}
    if isinstance(message, str):
        return {"kind": "user_message", "content": message, "payload": {}}
    if isinstance(message, dict):
        role = message.get("role") or message.get("type", "")
        return {"kind": _ROLE_TO_KIND.get(role, "custom"), "content": _text_of(message.get("content")),
                "payload": {k: v for k, v in message.items() if k not in ("content",)}}
    mtype = getattr(message, "type", "custom")
    payload: dict[str, Any] = {}
    if getattr(message, "id", None):
        payload["message_id"] = message.id
    if getattr(message, "tool_calls", None):
        payload["tool_calls"] = [{"id": c.get("id"), "name": c.get("name"), "args": c.get("args")}
                                 for c in message.tool_calls]
    if getattr(message, "usage_metadata", None):
        payload["usage"] = dict(message.usage_metadata)
    meta = getattr(message, "response_metadata", None) or {}
    if meta.get("model_name") or meta.get("model"):
        payload["model"] = meta.get("model_name") or meta.get("model")
    name = getattr(message, "name", None)
    if mtype == "tool":
        payload["tool_call_id"] = getattr(message, "tool_call_id", None)
        payload["status"] = getattr(message, "status", "success")
    return {"kind": _ROLE_TO_KIND.get(mtype, "custom"), "content": _text_of(message.content),
            "name": name, "payload": payload}


class ExperienceRecorder:
    """Logs episodes and events for one agent through the background writer.

    ``ExperienceRecorder("helpdesk")`` writes to the default SQLite database;
    pass ``url`` (or set ``AGENT_SLEEP_DATABASE_URL``) for PostgreSQL. Writers are
    shared per database, so many recorders cost one thread and one pool.
    """

    def __init__(self, agent: str, *, url: str | None = None, settings: Settings | None = None,
                 writer: BackgroundWriter | None = None) -> None:
        self.agent = check_agent_name(agent)  # at construction: a bad name must not surface in the writer thread
        if settings is not None and url is not None:  # both given: the url names the database
            settings = settings.model_copy(update={"database_url": url})
        self.settings = settings or get_settings(database_url=url)
        self.url = self.settings.resolved_database_url
        self.writer = writer or shared_writer(self.url, Path(self.settings.data_dir), self._open_store)
        self._seq: dict[str, itertools.count[int]] = {}
        self._cont: dict[str, dict[str, Any]] = {}  # episode key -> continuation (see store.ops)
        self._cont_value: dict[str, Any] = {}  # a continuation's resume value, sent with its first op
        self._lock = threading.Lock()

    def _open_store(self) -> Any:
        from agent_sleep.store import ExperienceStore  # deferred: SQLAlchemy engine setup

        return ExperienceStore(self.url, settings=self.settings)

    # -- episodes ---------------------------------------------------------------------
    def start_episode(self, *, thread_id: str | None = None, episode_id: str | None = None,
                      metadata: dict[str, Any] | None = None) -> str:
        eid = normalize_episode_id(episode_id) if episode_id else new_id()
        with self._lock:
            self._seq[eid] = itertools.count()
        self.writer.submit({"op": "episode_start", "id": eid, "agent": self.agent,
                            "thread_id": None if thread_id is None else str(thread_id)[:256],
                            "meta": metadata or {}, "ts": time.time()})
        return eid

    def continue_episode(self, run_id: str, *, thread_id: str | None = None, value: Any = None,
                         metadata: dict[str, Any] | None = None) -> str:
        """Log run ``run_id`` as the continuation of this agent's newest ``interrupted`` episode on
        ``thread_id`` (a new episode ``run_id`` when there is none); ``value`` (e.g. the resume value)
        becomes the content of its ``resume`` event. Returns ``run_id``: log under it as usual, and read
        the episode under it too (the store resolves it)."""
        run = normalize_episode_id(run_id)
        with self._lock:
            self._seq[run] = itertools.count()
            self._cont[run] = {"run": run, "agent": self.agent,
                               "thread_id": None if thread_id is None else str(thread_id)[:256],
                               "meta": metadata or {}}
            if value is not None:
                self._cont_value[run] = value
        return run

    def end_episode(self, episode_id: str, *, status: str = "completed", outcome: str | None = None,
                    error: str | None = None) -> None:
        with self._lock:
            self._seq.pop(episode_id, None)
            cont = self._cont.pop(episode_id, None)
        op: Op = {"op": "episode_end", "id": normalize_episode_id(episode_id), "status": status, "outcome": outcome,
                  "error": None if error is None else _clean_text(error)[:10_000], "ts": time.time()}
        self.writer.submit(self._continued(op, episode_id, cont))

    def is_open(self, episode_id: str) -> bool:
        return episode_id in self._seq

    # -- events -------------------------------------------------------------------------
    def log(self, episode_id: str, kind: str, content: str = "", *, name: str | None = None,
            payload: dict[str, Any] | None = None, model_input: ModelInput | None = None) -> None:
        """Queue one event; oversized content is truncated and marked, never refused.

        ``model_input``: what the model was given for the call that produced this event; it is
        serialised and deduplicated on the writer thread (``ExperienceStore.model_calls`` reads it).
        """
        counter = self._seq.get(episode_id) or self._counter(episode_id)
        op = self._event_op(episode_id, next(counter), kind, content, name, payload or {})
        if model_input is not None:
            op[DEFER] = {"model_input": model_input, "cap": self.settings.max_payload_bytes}
        self.writer.submit(self._continued(op, episode_id, self._cont.get(episode_id)))

    def log_json(self, episode_id: str, kind: str, value: Any, *, name: str | None = None,
                 payload: dict[str, Any] | None = None) -> None:
        """Queue an event whose content is ``value`` as JSON (a graph's state, an interrupt's payload),
        serialised on the writer thread. Pass a value the agent will not change afterwards."""
        counter = self._seq.get(episode_id) or self._counter(episode_id)
        op = self._event_op(episode_id, next(counter), kind, "", name, payload or {})
        op[DEFER] = {"json": value, "cap": self.settings.max_payload_bytes}
        self.writer.submit(self._continued(op, episode_id, self._cont.get(episode_id)))

    def log_messages(self, episode_id: str, messages: Iterable[Any], *,
                     model_input: ModelInput | None = None) -> None:
        """Log messages as events; ``model_input`` goes with the first (see :meth:`log`)."""
        for m in messages:
            ev = message_to_event(m)
            self.log(episode_id, ev["kind"], ev["content"], name=ev.get("name"), payload=ev.get("payload"),
                     model_input=model_input)
            model_input = None

    def _counter(self, episode_id: str) -> itertools.count[int]:
        # An episode this recorder did not start (another process started it, or it ended and
        # more comes): continue it, after its last event, instead of reusing its seqs.
        with self._lock:
            counter = self._seq.get(episode_id)
            if counter is None:
                counter = self._seq[episode_id] = itertools.count()
                self._cont[episode_id] = {"run": new_id(), "target": normalize_episode_id(episode_id)}
        return counter

    def _continued(self, op: Op, episode_id: str, cont: dict[str, Any] | None) -> Op:
        if cont is not None:
            op["cont"] = cont
            if episode_id in self._cont_value:
                value = self._cont_value.pop(episode_id, None)
                op.setdefault(DEFER, {"cap": self.settings.max_payload_bytes})["cont_value"] = value
        return op

    def _event_op(self, episode_id: str, seq: int, kind: str, content: str, name: str | None,
                  payload: dict[str, Any]) -> Op:
        content = _clean_text(content)
        cap = self.settings.max_payload_bytes
        size = len(content.encode("utf-8"))
        if size > cap or payload:
            try:
                payload_json = json.dumps(payload, ensure_ascii=False)
            except (TypeError, ValueError):
                # Objects JSON cannot hold become their str(); the stored payload stays JSON.
                try:
                    payload_json = json.dumps(payload, ensure_ascii=False, default=str)
                except (TypeError, ValueError):
                    payload_json = json.dumps({"unserialisable": repr(payload)[:1000]})
                payload = json.loads(payload_json)
            if size + len(payload_json) > cap:
                warnings.warn(f"agent-sleep: {kind} event of {size + len(payload_json):,} bytes truncated to the "
                              f"cap of {cap:,} (Settings.max_payload_bytes)", CaptureWarning, stacklevel=3)
                content = content.encode("utf-8")[: max(0, cap // 2)].decode("utf-8", "ignore")
                if len(payload_json) > cap // 2:
                    payload = {"truncated_payload_bytes": len(payload_json)}
                payload["truncated_from_bytes"] = size
        return {"op": "event", "id": new_id(), "episode_id": episode_id, "seq": seq, "kind": kind,
                "name": None if name is None else str(name)[:256], "content": content, "payload": payload,
                "ts": time.time()}

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything logged so far is in the database."""
        return self.writer.flush(timeout)
