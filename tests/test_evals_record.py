"""The benches' one results writer and scratch PostgreSQL database (``evals/record.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.record import scratch_database, write_probe, write_results
from tests.conftest import PG_URL


def test_results_are_written_whole_with_their_table_beside_them(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "bench.json"
    assert write_results(out, {"b": 1, "a": Path("x"), "when": 2.5}, markdown="| t |\n") == out
    assert list(json.loads(out.read_text())) == ["b", "a", "when"]  # the bench's order, paths as strings
    assert json.loads(out.read_text())["a"] == "x"
    assert out.with_suffix(".md").read_text() == "| t |\n"
    write_results(out, {"c": 3})  # a JSON-only bench leaves no table
    assert json.loads(out.read_text()) == {"c": 3}

    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("no")

    with pytest.raises(ValueError):
        write_results(out, {"d": 4, "bad": Unprintable()})
    assert json.loads(out.read_text()) == {"c": 3}  # the failed write left the previous record, and no temp file
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.md"]


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set AGENT_SLEEP_TEST_PG_URL to test PostgreSQL")
def test_a_scratch_database_exists_inside_the_block_and_is_dropped_after() -> None:
    from sqlalchemy import create_engine, text

    assert PG_URL
    with scratch_database(PG_URL, "agent_sleep_test_scratch_") as url:
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("select current_database()")).scalar().startswith("agent_sleep_test_scratch_")
        name = engine.url.database
        engine.dispose()
    admin = create_engine(PG_URL)
    with admin.connect() as conn:
        assert not conn.execute(text("select 1 from pg_database where datname = :n"), {"n": name}).first()
    admin.dispose()


def test_a_probe_page_names_its_command_and_is_written_whole(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deep" / "probe.md"
    text = write_probe("probe_x.py", ["--docs", "d"], 12.4, "| a |\n|---|\n", out, detail="2 pages")
    assert text == "`.venv/bin/python evals/probe_x.py --docs d` (12 s; 2 pages)\n\n| a |\n|---|\n"
    assert out.read_text(encoding="utf-8") == text and text in capsys.readouterr().out
    assert write_probe("probe_x.py", [], 0.2, "body", None) == "`.venv/bin/python evals/probe_x.py` (0 s)\n\nbody\n"
