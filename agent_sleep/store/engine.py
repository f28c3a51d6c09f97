"""Database engines and schema migrations for the experience store.

SQLite (the default) runs in WAL mode with foreign keys on; PostgreSQL works
through any ``postgresql+psycopg://`` URL. The schema is managed by Alembic; a
database migrated by a newer agent-sleep is refused instead of being misread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from agent_sleep.errors import (
    ConfigError,
    DatabaseUnavailableError,
    MissingDependencyError,
    SchemaOutdatedError,
    SchemaTooNewError,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Serialises concurrent `migrate()` calls from several processes on PostgreSQL.
_PG_MIGRATION_LOCK = 0x5A6E_11


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _name(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, safe with WAL
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str, *, connect_timeout: float = 5.0) -> Engine:
    """An engine for ``url``; SQLite parent folders are created."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif backend == "postgresql":
        # Long-lived agent processes see idle connections dropped by servers and
        # poolers; ping on checkout and recycle instead of failing a write.
        kwargs.update(pool_pre_ping=True, pool_recycle=1800)
        if parsed.get_driver_name() in ("psycopg", "psycopg2"):
            kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout))}
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise MissingDependencyError(
            f"no driver for {safe_url(url)}: {exc}. For PostgreSQL: pip install 'agent-sleep[postgres]'"
        ) from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to database {_name(engine)}: "
            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
        ) from exc


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot read schema of {_name(engine)}: {exc.orig}") from exc


def check_schema(engine: Engine) -> None:
    """Raise unless the database is at exactly the schema this code knows."""
    rev = current_revision(engine)
    head = head_revision()
    if rev == head:
        return
    if rev is not None and rev not in known_revisions():
        raise SchemaTooNewError(
            f"database {_name(engine)} has schema revision {rev!r}, newer than this "
            f"agent-sleep understands (latest known: {head!r}); upgrade agent-sleep"
        )
    raise SchemaOutdatedError(
        f"database {_name(engine)} is at schema {rev or 'none'}, expected {head}; "
        "run `agent-sleep init` to migrate it"
    )


def migrate(engine: Engine) -> str:
    """Upgrade the database to the newest schema; returns the revision it is at."""
    from alembic import command

    rev = current_revision(engine)
    if rev is not None and rev not in known_revisions():
        check_schema(engine)  # raises SchemaTooNewError with the full message
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            command.upgrade(_alembic_config(conn), "head")
    except OperationalError as exc:
        raise DatabaseUnavailableError(f"migration of {_name(engine)} failed: {exc.orig}") from exc
    return head_revision()
