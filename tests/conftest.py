"""Shared fixtures: one test body runs over SQLite and (when configured) PostgreSQL.

Set ``AGENT_SLEEP_TEST_PG_URL`` (``.ci/run`` does) to a PostgreSQL server where the
user may create databases; every test then gets a fresh database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_sleep.config import Settings

PG_URL = os.environ.get("AGENT_SLEEP_TEST_PG_URL")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests never touch the user's data dir; the model cache stays shared (conversion is slow).
    monkeypatch.setenv("AGENT_SLEEP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AGENT_SLEEP_DATABASE_URL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _fresh_pg_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    assert PG_URL
    name = f"agent_sleep_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), name


def _drop_pg_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="set AGENT_SLEEP_TEST_PG_URL to test PostgreSQL"),
])]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL for each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'experience.sqlite'}"
        return
    url, name = _fresh_pg_database()
    try:
        yield url
    finally:
        from agent_sleep.capture import writer as writer_mod

        for w in list(writer_mod._WRITERS.values()):
            w.close(timeout=2)
        writer_mod._WRITERS.clear()
        _drop_pg_database(name)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=db_url)


@pytest.fixture
def store(settings: Settings) -> Iterator[object]:
    from agent_sleep.store import ExperienceStore

    s = ExperienceStore(settings=settings)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _close_writers() -> Iterator[None]:
    yield
    from agent_sleep.capture import writer as writer_mod

    for w in list(writer_mod._WRITERS.values()):
        w.close(timeout=2)
    writer_mod._WRITERS.clear()
