"""Files users name on the command line: ``log import``, ``documents add`` and ``internalize`` refuse bad input clearly.

Every refusal exits 1 with the path and the problem on stderr, and stores nothing.
Special files (a FIFO nobody writes to, a device) must be refused without blocking,
so those cases run the real entry point in a thread with a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sleep.cli.main import main
from agent_sleep.config import get_settings
from agent_sleep.store import ExperienceStore

EPISODE = {
    "kind": "episode", "format": 1,
    "episode": {"id": "ep-1", "agent": "helpdesk", "started_at": "2026-01-02T03:04:05+00:00", "status": "completed"},
    "events": [{"seq": 0, "kind": "user_message", "content": "where is A1?"},
               {"seq": 1, "kind": "assistant_message", "content": "shipped"}],
    "feedback": [{"score": 0.5, "comment": "ok"}],
}  # fmt: skip


def _bounded_main(argv: list[str], deadline: float = 60.0) -> int:
    """``main(argv)``, failing the test instead of hanging when a read blocks."""
    result: list[int | BaseException] = []

    def run() -> None:
        try:
            result.append(main(argv))
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), f"agent-sleep {' '.join(argv)} still running after {deadline} s"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _documents() -> int:
    store = ExperienceStore(settings=get_settings())
    try:
        return len(store.documents())
    finally:
        store.close()


# ---------------------------------------------------------------- log import


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format", "1", "format must be a positive integer, got '1'"),
        ("format", None, "format must be a positive integer, got None"),
        ("episode.started_at", 1e300, "episode.started_at: Input should be a valid datetime"),
        ("feedback.0.score", "high", "feedback.0.score: Input should be a valid number"),
        ("events.1.seq", 0, "episode 'ep-1' has two events with seq 0 (events.0 and events.1)"),
        ("events.0.payload", {"nested": [None, {"x": None}], "bad": "\ud800"}, "events.0.payload: payload holds"),
    ],
)
def test_log_import_refuses_bad_lines_before_opening_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, value: object, message: str
) -> None:
    obj = json.loads(json.dumps(EPISODE))
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EPISODE | {"episode": EPISODE["episode"] | {"id": "ep-0"}}) + "\n" + json.dumps(obj) + "\n")
    assert main(["log", "import", str(bad)]) == 1
    assert f"error: bad.jsonl:2: {message}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # the file was checked before any database was created


def test_log_import_of_non_json_bytes_and_empty_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(EPISODE).encode() + b"\n" + b'{"kind": "episode", "x": "caf\xe9"}\n')
    assert main(["log", "import", str(bad)]) == 1
    assert "bad.jsonl:2: not valid UTF-8 (byte 29)" in capsys.readouterr().err
    bad.write_text(json.dumps(EPISODE).replace('"score": 0.5', '"score": NaN') + "\n")
    assert main(["log", "import", str(bad)]) == 1
    assert "bad.jsonl:1: not valid JSON (NaN is not a JSON value)" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert main(["log", "import", str(empty)]) == 0
    assert "imported 0 episodes, 0 events, 0 feedback, 0 documents; 0 already present" in capsys.readouterr().out


def test_log_import_twice_reports_nothing_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(EPISODE) + "\n")
    assert main(["log", "import", str(good)]) == 0
    assert "imported 1 episodes, 2 events, 1 feedback, 0 documents; 0 already present" in capsys.readouterr().out
    assert main(["log", "import", str(good)]) == 0
    assert "imported 0 episodes, 0 events, 0 feedback, 0 documents; 4 already present, skipped" in \
        capsys.readouterr().out
    assert main(["episodes", "show", "ep-1", "--json"]) == 0
    assert [e["content"] for e in json.loads(capsys.readouterr().out)["events"]] == ["where is A1?", "shipped"]


# ---------------------------------------------------------------- special files


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, tuple[Path, str]]]:
    """name -> (path, what the error must say)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    (tmp_path / "to-null").symlink_to("/dev/null")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    yield {
        "fifo": (fifo, f"{fifo} is a named pipe (FIFO), not a regular file"),
        "device": (Path("/dev/null"), "/dev/null is a character device, not a regular file"),
        "socket": (sock_path, f"{sock_path} is a socket, not a regular file"),
        "symlink to a device": (tmp_path / "to-null",
                                f"{tmp_path / 'to-null'} (a symlink to /dev/null) is a character device"),
        "dangling symlink": (tmp_path / "dangling", f"{tmp_path / 'dangling'} does not exist (a symlink to a missing"),
        "folder": (tmp_path / "folder", f"{tmp_path / 'folder'} is a folder, not a regular file"),
        "missing": (tmp_path / "missing.md", f"{tmp_path / 'missing.md'} does not exist"),
    }  # fmt: skip
    sock.close()


@pytest.mark.parametrize("kind", ["fifo", "device", "socket", "symlink to a device", "dangling symlink", "folder",
                                  "missing"])  # fmt: skip
@pytest.mark.parametrize(
    ("command", "what"),
    [(["documents", "add"], "document"), (["internalize"], "document"), (["log", "import"], "import file")],
)
def test_special_files_are_refused_without_blocking(
    specials: dict[str, tuple[Path, str]], capsys: pytest.CaptureFixture[str], kind: str, command: list[str],
    what: str,
) -> None:  # fmt: skip
    path, message = specials[kind]
    extra = ["--name", "skill"] if command == ["internalize"] else []
    assert _bounded_main([*command, str(path), *extra]) == 1
    assert f"error: {what} {message}" in capsys.readouterr().err
    assert _documents() == 0


@pytest.mark.parametrize("command", [["documents", "add"], ["internalize"]])
def test_document_size_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                           command: list[str]) -> None:  # fmt: skip
    monkeypatch.setenv("AGENT_SLEEP_MAX_DOCUMENT_BYTES", "100")
    extra = ["--name", "skill"] if command == ["internalize"] else []
    doc = tmp_path / "big.md"
    doc.write_text("x" * 101)
    assert _bounded_main([*command, str(doc), *extra]) == 1
    err = capsys.readouterr().err
    assert f"document {doc} is 101 bytes, above the cap of 100 bytes (AGENT_SLEEP_MAX_DOCUMENT_BYTES" in err
    # A file that reports no size (as /proc files do) is still read no further than the cap.
    assert _bounded_main([*command, "/proc/self/status", *extra]) == 1
    assert "document /proc/self/status has more than 100 bytes, above the cap" in capsys.readouterr().err
    assert _documents() == 0
    monkeypatch.setenv("AGENT_SLEEP_MAX_DOCUMENT_BYTES", "lots")
    assert main([*command, str(doc), *extra]) == 1
    assert "AGENT_SLEEP_MAX_DOCUMENT_BYTES='lots'" in capsys.readouterr().err


def test_documents_add_follows_symlinks_strips_bom_and_names_bad_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "policy.md"
    doc.write_bytes(b"\xef\xbb\xbfRefunds within 30 days.\n")
    link = tmp_path / "link.md"
    link.symlink_to(doc)
    assert main(["documents", "add", str(link), "--source", "kb/policy"]) == 0
    assert "kb/policy v1" in capsys.readouterr().out
    store = ExperienceStore(settings=get_settings())
    [stored] = store.documents()
    store.close()
    assert stored.content == "Refunds within 30 days.\n"  # the byte-order mark is not part of the text

    latin = tmp_path / "latin.md"
    latin.write_bytes(b"caf\xe9 au lait")
    assert main(["documents", "add", str(latin), "--source", "kb/latin"]) == 1
    assert f"error: document {latin} is not valid UTF-8 (byte 3" in capsys.readouterr().err
    assert _documents() == 1
