"""The guard's journal: appends are whole lines, a torn line from a killed writer is skipped and fenced off."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent_sleep.errors import InvalidInputError
from agent_sleep.guard import journal_path, read_journal
from agent_sleep.guard.journal import append_journal


def test_appends_survive_a_torn_line_and_concurrent_writers(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "helpdesk")
    assert path == tmp_path / "guard" / "helpdesk.jsonl" and read_journal(path) == ([], 0)
    append_journal(path, {"n": 0})
    with path.open("ab") as fh:
        fh.write(b'{"n": 1, "check": {"agen')  # a writer killed mid-line
    append_journal(path, {"n": 2})
    assert read_journal(path) == ([{"n": 0}, {"n": 2}], 1)

    threads = [threading.Thread(target=lambda i=i: [append_journal(path, {"n": 100 + i, "pad": "x" * 20_000})
                                                    for _ in range(5)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records, skipped = read_journal(path)
    assert skipped == 1 and len(records) == 22 and all(len(json.dumps(r)) > 20_000 for r in records[2:])
    assert read_journal(path, limit=3)[0] == records[-3:]


def test_a_journal_is_named_by_a_valid_agent_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="invalid agent name '../x'"):
        journal_path(tmp_path, "../x")
