"""Migration 0006 (``feedback.instruction``) upgrades and downgrades on SQLite and PostgreSQL, keeping the rows."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from agent_sleep.config import Settings
from agent_sleep.store import ExperienceStore
from agent_sleep.store.engine import _alembic_config, current_revision, head_revision


def _move(url: str, revision: str, *, down: bool) -> None:
    from alembic import command

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            (command.downgrade if down else command.upgrade)(_alembic_config(conn), revision)
    finally:
        engine.dispose()


def _columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("feedback")}
    finally:
        engine.dispose()


def test_0006_upgrades_and_downgrades_keeping_feedback(db_url: str, tmp_path: Path) -> None:
    assert head_revision() == "0006"
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url)
    store = ExperienceStore(settings=settings)
    eid = store.start_episode("helpdesk")
    store.add_feedback(eid, score=0.0, correction="Order A1 shipped.", instruction="Ask for the order number.")
    store.close()
    assert {"correction", "instruction"} <= _columns(db_url)

    _move(db_url, "0005", down=True)
    assert "instruction" not in _columns(db_url) and "correction" in _columns(db_url)
    engine = create_engine(db_url)
    try:
        assert current_revision(engine) == "0005"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT score, correction FROM feedback")).one() == (0.0, "Order A1 shipped.")
    finally:
        engine.dispose()

    _move(db_url, "head", down=False)
    store = ExperienceStore(settings=settings, migrate=False)  # at the schema this code knows again
    try:
        (fb,) = store.feedback(eid)
        assert (fb.correction, fb.instruction) == ("Order A1 shipped.", None)  # the column is back, empty
        store.add_feedback(eid, instruction="Ask for the order number.")
        assert [f.instruction for f in store.feedback(eid)] == [None, "Ask for the order number."]
    finally:
        store.close()
