"""JSONL export/import round trips, all-or-nothing imports, line-numbered errors."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent_sleep.config import Settings
from agent_sleep.errors import EncodingError, InvalidEventError, InvalidInputError, PayloadTooLargeError
from agent_sleep.store import ExperienceStore
from agent_sleep.store.jsonl import ImportReport, export_jsonl, import_jsonl, read_import


def _fill(store: ExperienceStore) -> str:
    eid = store.start_episode("helpdesk", thread_id="t1")
    store.append_events(eid, [{"kind": "user_message", "content": "où est ma commande?"},
                              {"kind": "assistant_message", "content": "shipped", "payload": {"tool_calls": []}}])
    store.end_episode(eid, outcome="resolved")
    store.add_feedback(eid, score=1.0, comment="great")
    store.add_document("kb/a.md", "Alpha policy.", agent="helpdesk")
    return eid


def test_corrections_and_consolidated_documents_round_trip(store: ExperienceStore, tmp_path: Path) -> None:
    eid = _fill(store)
    store.add_feedback(eid, correction="It ships on Monday.")
    store.add_feedback(eid, instruction="Always ask for the order number first.")
    doc = store.documents()[0]
    store.mark_documents_consolidated([doc.id], "run-7")
    path = tmp_path / "log.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        export_jsonl(store, fh)
    target = ExperienceStore(f"sqlite:///{tmp_path / 'copy.sqlite'}", settings=Settings(data_dir=tmp_path))
    import_jsonl(target, path)
    assert [f.correction for f in target.feedback(eid)] == [None, "It ships on Monday.", None]
    assert [f.instruction for f in target.feedback(eid)] == [None, None, "Always ask for the order number first."]
    assert target.documents()[0].consolidation_run == "run-7" and target.documents()[0].consolidated_at is not None
    lines = path.read_text(encoding="utf-8").splitlines()
    obj = json.loads(lines[0])
    obj["feedback"] = [{"correction": "  "}]
    (tmp_path / "bad.jsonl").write_text(json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(InvalidEventError, match=r"bad.jsonl:1: feedback.0.correction: a correction must not be blank"):
        read_import(tmp_path / "bad.jsonl", max_payload_bytes=10_000)


def test_round_trip(store: ExperienceStore, tmp_path: Path) -> None:
    eid = _fill(store)
    path = tmp_path / "log.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        assert export_jsonl(store, fh) == 2
    target = ExperienceStore(f"sqlite:///{tmp_path / 'copy.sqlite'}", settings=Settings(data_dir=tmp_path))
    rep = import_jsonl(target, path)
    assert (rep.episodes, rep.events, rep.feedback, rep.documents) == (1, 2, 1, 1)
    again = import_jsonl(target, path)  # idempotent, and the report says nothing new was written
    assert (again.episodes, again.events, again.feedback, again.documents, again.skipped) == (0, 0, 0, 0, 5)
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
        json.dumps({"kind": "episode", "episode": {"id": "x"}}): (InvalidEventError,
                                                                  "bad.jsonl:3: episode.agent: Field required"),
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


# ---------------------------------------------------------------- every bad line is refused the same way

def _episode(eid: str = "ep-1", seqs: tuple[int, ...] = (0, 1), **episode: object) -> dict:
    return {
        "kind": "episode", "format": 1,
        "episode": {"id": eid, "agent": "helpdesk", "thread_id": "t1", "started_at": "2026-01-02T03:04:05+00:00",
                    "ended_at": "2026-01-02T03:05:00+00:00", "status": "completed", "outcome": "resolved",
                    "error": None, "meta": {"k": "v"}, **episode},
        "events": [{"id": f"{eid}-e{s}", "seq": s, "kind": "user_message", "name": None, "content": f"msg {s}",
                    "payload": {}, "created_at": "2026-01-02T03:04:06+00:00"} for s in seqs],
        "feedback": [{"id": f"{eid}-f0", "score": 1.0, "label": None, "comment": "good", "source": "human",
                      "created_at": "2026-01-02T03:06:00+00:00"}],
    }  # fmt: skip


def _document(did: str = "doc-1", content: str = "Alpha policy.", version: int = 1) -> dict:
    return {"kind": "document", "format": 1,
            "document": {"id": did, "agent": "helpdesk", "source": "kb/a.md", "title": None, "content": content,
                         "content_hash": hashlib.sha256(content.encode()).hexdigest(), "version": version,
                         "created_at": "2026-01-02T03:04:05+00:00", "meta": {}, "consolidated_at": None}}  # fmt: skip


def _with(obj: dict, path: str, value: object) -> str:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = obj
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return json.dumps(obj)


_GOOD = json.dumps(_episode("ep-0"))
_BAD_LINES = {
    "format as text": (_with(_episode(), "format", "1"), "format must be a positive integer, got '1'"),
    "format null": (_with(_episode(), "format", None), "format must be a positive integer, got None"),
    "format newer": (_with(_episode(), "format", 2), "format 2 is newer than this agent-sleep reads"),
    "started_at 1e300": (_with(_episode(), "episode.started_at", 1e300), "episode.started_at: Input should be a valid datetime"),
    "started_at before year 1 in UTC": (_with(_episode(), "episode.started_at", "0001-01-01T00:00:00+05:00"),
                                        "episode.started_at: timestamp out of range"),
    "NaN": (_GOOD.replace('"score": 1.0', '"score": NaN'), "not valid JSON (NaN is not a JSON value)"),
    "Infinity in a payload": (_GOOD.replace('"payload": {}', '"payload": {"x": -Infinity}'), "not valid JSON (-Infinity"),
    "score overflowing to infinity": (_GOOD.replace('"score": 1.0', '"score": 1e400'), "feedback.0.score: Input should be a finite number"),
    "score as a word": (_with(_episode(), "feedback.0.score", "high"), "feedback.0.score: Input should be a valid number"),
    "seq null": (_with(_episode(), "events.1.seq", None), "events.1.seq: Field required"),
    "seq above INTEGER": (_with(_episode(), "events.0.seq", 2**40), "events.0.seq: Input should be less than or equal to 2147483647"),
    "seq not an integer": (_with(_episode(), "events.0.seq", True), "events.0.seq: Input should be a valid integer"),
    "feedback saying nothing": (_with(_episode(), "feedback.0", {"source": "human"}),
                                "feedback.0: feedback needs at least one of score, label, comment, correction or instruction"),
    "event null": (_with(_episode(), "events", [None]), "events.0: Input should be a valid dictionary"),
    "events not a list": (_with(_episode(), "events", 5), "events: Input should be a valid list"),
    "episode null": (_with(_episode(), "episode", None), "episode: Field required"),
    "meta a list": (_with(_episode(), "episode.meta", [1]), "episode.meta: Input should be a valid dictionary"),
    "id too long for its column": (_with(_episode(), "episode.id", "x" * 65), "episode.id: String should have at most 64 characters"),
    "blank agent": (_with(_episode(), "episode.agent", "  "), "episode.agent: must not be blank"),
    "label too long": (_with(_episode(), "feedback.0.label", "l" * 65), "feedback.0.label: String should have at most 64"),
    "status unknown": (_with(_episode(), "episode.status", "done"), "episode.status: Input should be 'running', 'completed', 'error' or 'interrupted'"),
    "array": ("[1, 2]", "expected a JSON object, got an array"),
    "null": ("null", "expected a JSON object, got null"),
    "nested too deeply": ("[" * 100_000 + "]" * 100_000, "not valid JSON here (nested too deeply)"),
    "integer of 5000 digits": ('{"kind": "episode", "n": ' + "7" * 5000 + "}", "not valid JSON (Exceeds the limit"),
    "unknown kind": (json.dumps({"kind": ["episode"]}), "unknown kind ['episode']"),
    "document hash not of its content": (_with(_document(), "document.content_hash", "0" * 64),
                                         "document: content_hash is not the sha256 of the content"),
    "document version above INTEGER": (_with(_document(), "document.version", 2**40), "document.version: Input should be less"),
    "document source too long": (_with(_document(), "document.source", "s" * 513), "document.source: String should have at most 512"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_BAD_LINES))
def test_each_bad_line_is_a_line_numbered_error_and_nothing_is_written(store: ExperienceStore, tmp_path: Path,
                                                                       case: str) -> None:  # fmt: skip
    bad, message = _BAD_LINES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{_GOOD}\n{bad}\n", encoding="utf-8")
    with pytest.raises(InvalidEventError, match=re.escape(f"bad.jsonl:2: {message}")):
        import_jsonl(store, path)
    assert store.episodes() == [] and store.documents() == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_GOOD.replace('"payload": {}', '"payload": {"x": "\\ud800"}'), "bad.jsonl:2: events.0.payload: payload holds"),
        (_GOOD.replace('"msg 0"', '"nul \\u0000"'), "bad.jsonl:2: events.0.content: content contains a NUL"),
        (_GOOD.replace('"good"', '"\\udfff"'), "bad.jsonl:2: feedback.0.comment: feedback text is not valid UTF-8"),
    ],
)
def test_text_that_cannot_be_stored_is_an_encoding_error(store: ExperienceStore, tmp_path: Path, bad: str,
                                                          message: str) -> None:  # fmt: skip
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{_GOOD}\n{bad}\n", encoding="utf-8")
    with pytest.raises(EncodingError, match=re.escape(message)):
        import_jsonl(store, path)
    assert store.episodes() == []


def test_payload_cap_applies_to_imported_events(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(_with(_episode(), "events.1.content", "x" * 101) + "\n", encoding="utf-8")
    with pytest.raises(PayloadTooLargeError, match=r"big.jsonl:1: events.1 is 101 bytes, above the cap of 100"):
        read_import(path, max_payload_bytes=100)
    assert len(read_import(path, max_payload_bytes=101).ops) == 5  # start, 2 events, end, feedback


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([_episode(), _episode()], "dup.jsonl:2: episode 'ep-1' already appears on line 1"),
        ([_episode(seqs=(0, 1, 0))], "dup.jsonl:1: episode 'ep-1' has two events with seq 0 (events.0 and events.2)"),
        ([_episode(), json.loads(_with(_episode("ep-2"), "events.0.id", "ep-1-e1"))],
         "dup.jsonl:2: event id 'ep-1-e1' (events.0) already appears on line 1"),
        ([json.loads(_with(_episode(), "events.1.id", "ep-1-e0"))],
         "dup.jsonl:1: event id 'ep-1-e0' (events.1) already appears in events.0 of this line"),
        ([_document(), _document()], "dup.jsonl:2: document 'doc-1' already appears on line 1"),
        ([_document(), _document("doc-2", "Other text.")],
         "dup.jsonl:2: document version ('kb/a.md', 1) already appears on line 1"),
    ],
)
def test_duplicates_within_one_file_are_refused(store: ExperienceStore, tmp_path: Path, lines: list[dict],
                                                message: str) -> None:  # fmt: skip
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines), encoding="utf-8")
    with pytest.raises(InvalidEventError, match=re.escape(message)):
        import_jsonl(store, path)
    assert store.episodes() == [] and store.documents() == []


def test_report_counts_only_new_rows(store: ExperienceStore, tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps(_episode()) + "\n", encoding="utf-8")
    assert import_jsonl(store, first) == ImportReport(episodes=1, events=2, feedback=1, documents=0, skipped=0)

    # ep-1 again with one new event (seq 2) and seq 0 under another id (that seq is taken: skipped), a new
    # episode and a document.
    again = json.loads(_with(_episode(seqs=(0, 1, 2)), "events.0.id", "another-id"))
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(o) + "\n" for o in (again, _episode("ep-2", seqs=(0,)), _document())))
    rep = import_jsonl(store, second)
    assert rep == ImportReport(episodes=1, events=2, feedback=1, documents=1, skipped=4)
    assert [(e.seq, e.content) for e in store.events("ep-1")] == [(0, "msg 0"), (1, "msg 1"), (2, "msg 2")]
    assert import_jsonl(store, second) == ImportReport(episodes=0, events=0, feedback=0, documents=0, skipped=9)


def test_empty_file_byte_order_mark_and_nulls(store: ExperienceStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert import_jsonl(store, empty) == ImportReport(episodes=0, events=0, feedback=0, documents=0)
    path = tmp_path / "bom.jsonl"
    line = _with(_episode(), "episode.meta", None)  # null means "not given", as before
    line = _with(json.loads(line), "feedback", None)
    path.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n\n")
    assert import_jsonl(store, path) == ImportReport(episodes=1, events=2, feedback=0, documents=0)
    assert store.get_episode("ep-1").meta == {}


def test_long_episode_ids_get_storable_derived_event_ids(store: ExperienceStore, tmp_path: Path) -> None:
    obj = _episode("e" * 64)
    for row in [*obj["events"], *obj["feedback"]]:
        del row["id"]
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    assert import_jsonl(store, path).events == 2
    assert all(len(e.id) == 64 for e in store.events("e" * 64))
    assert [len(f.id) for f in store.feedback("e" * 64)] == [64]
    assert import_jsonl(store, path).skipped == 4  # the same ids again: nothing new


def test_only_regular_files_are_imported(store: ExperienceStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=f"import file {re.escape(str(tmp_path))} is a folder"):
        import_jsonl(store, tmp_path)
    with pytest.raises(InvalidInputError, match="import file /dev/null is a character device, not a regular file"):
        import_jsonl(store, "/dev/null")
    with pytest.raises(InvalidInputError, match="does not exist"):
        import_jsonl(store, tmp_path / "missing.jsonl")


def test_keys_a_newer_exporter_adds_are_ignored(store: ExperienceStore, tmp_path: Path) -> None:
    obj = _episode()
    obj["provenance"] = {"host": "a"}
    obj["episode"]["n_events"] = 2
    obj["events"][0]["episode_id"] = "ep-1"
    obj["feedback"][0]["weight"] = 3
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps(obj) + "\n" + json.dumps(_document() | {"signed": True}) + "\n", encoding="utf-8")
    assert import_jsonl(store, path) == ImportReport(episodes=1, events=2, feedback=1, documents=1)
    ep = store.get_episode("ep-1")
    assert (ep.status, ep.outcome, ep.meta, ep.started_at.isoformat()) == \
        ("completed", "resolved", {"k": "v"}, "2026-01-02T03:04:05+00:00")
    assert [f.score for f in store.feedback("ep-1")] == [1.0]
