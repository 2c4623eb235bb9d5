"""Engine and session management for SQLite and PostgreSQL, and where their SQL differs.

SQLite gets the settings a concurrent server needs: WAL (readers never wait
for the writer), ``synchronous=NORMAL``, a ``busy_timeout`` and foreign keys;
an integer too large for it is a `DataError`, as on PostgreSQL.
The driver's own transaction handling is switched off so that SQLAlchemy
emits ``BEGIN`` itself: that makes SAVEPOINTs work, and lets write sessions
take the write lock up front (``BEGIN IMMEDIATE``) instead of failing when a
read transaction later tries to write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

WRITE_OPTION = "layerwatch_write"


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = 5000, **kwargs: Any) -> Engine:
    """Create the engine for ``url``; for a SQLite file, create its folder too."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")  # savepoint journals stay off disk
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> Exception | None:
        # sqlite3 refuses an int beyond 64 bits with a bare OverflowError when it binds
        # it; PostgreSQL refuses one out of its column's range with a DataError: one error.
        error = context.original_exception
        if isinstance(error, OverflowError):
            return DataError(context.statement, context.parameters, error)
        return None

    return engine


def insert_ignoring_duplicates(session: Session, table: Table) -> Any:
    """INSERT that skips rows whose key exists (ON CONFLICT DO NOTHING), in either dialect."""
    module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def make_sessionmakers(engine: Engine) -> tuple[sessionmaker[Session], sessionmaker[Session]]:
    """Return (read, write) session factories; write sessions lock SQLite up front."""
    read = sessionmaker(bind=engine, expire_on_commit=False)
    write = sessionmaker(
        bind=engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
    )
    return read, write


@contextmanager
def managed_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
