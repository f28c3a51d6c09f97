"""JSONL export/import round trips, all-or-nothing imports, line-numbered errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import EncodingError, InvalidEventError
from agent_sleep.store import ExperienceStore
from agent_sleep.store.jsonl import export_jsonl, import_jsonl


def _fill(store: ExperienceStore) -> str:
    eid = store.start_episode("helpdesk", thread_id="t1")
    store.append_events(eid, [{"kind": "user_message", "content": "où est ma commande?"},
                              {"kind": "assistant_message", "content": "shipped", "payload": {"tool_calls": []}}])
    store.end_episode(eid, outcome="resolved")
    store.add_feedback(eid, score=1.0, comment="great")
    store.add_document("kb/a.md", "Alpha policy.", agent="helpdesk")
    return eid


def test_round_trip(store: ExperienceStore, tmp_path: Path) -> None:
    eid = _fill(store)
    path = tmp_path / "log.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        assert export_jsonl(store, fh) == 2
    target = ExperienceStore(f"sqlite:///{tmp_path / 'copy.sqlite'}", settings=Settings(data_dir=tmp_path))
    rep = import_jsonl(target, path)
    assert (rep.episodes, rep.events, rep.feedback, rep.documents) == (1, 2, 1, 1)
    again = import_jsonl(target, path)  # idempotent
    assert again.episodes == 1
    assert target.get_episode(eid).model_dump(exclude={"started_at", "ended_at"}) == \
        store.get_episode(eid).model_dump(exclude={"started_at", "ended_at"})
    assert [e.content for e in target.events(eid)] == [e.content for e in store.events(eid)]
    assert [d.content_hash for d in target.documents()] == [d.content_hash for d in store.documents()]
    assert len(target.events(eid)) == 2 and len(target.feedback(eid)) == 1


def test_bad_line_names_line_and_writes_nothing(store: ExperienceStore, tmp_path: Path) -> None:
    _fill(store)
    buf = io.StringIO()
    export_jsonl(store, buf)
    lines = buf.getvalue().splitlines()
    target = ExperienceStore(f"sqlite:///{tmp_path / 'copy.sqlite'}", settings=Settings(data_dir=tmp_path))
    cases = {
        "{not json": (InvalidEventError, "bad.jsonl:3: not valid JSON"),
        json.dumps({"kind": "mystery"}): (InvalidEventError, "bad.jsonl:3: unknown kind"),
        json.dumps({"kind": "episode", "episode": {"id": "x"}}): (InvalidEventError, "bad.jsonl:3: episode needs"),
    }
    for bad, (exc, msg) in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text("\n".join([*lines, bad]) + "\n", encoding="utf-8")
        with pytest.raises(exc, match=msg):
            import_jsonl(target, path)
        assert target.episodes() == [] and target.documents() == []
    path = tmp_path / "bad.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"kind": "episode", "x": "\xff"}\n')
    with pytest.raises(EncodingError, match="bad.jsonl:3"):
        import_jsonl(target, path)
    assert target.episodes() == []
