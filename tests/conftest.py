"""Fixtures shared by the server, client and end-to-end tests.

Every fixture that touches a database runs once per backend: ``backend`` is
parametrized over SQLite and PostgreSQL, so a test that asks for
``database_url``, ``engine``, ``session`` or ``live_server`` runs on both and
is named ``test_x[sqlite]`` / ``test_x[postgres]``. The PostgreSQL runs carry
the ``postgres`` mark (deselect with ``-m "not postgres"``).

=====================  =========  ==================================================
fixture                scope      what it gives
=====================  =========  ==================================================
``backend``            session    ``"sqlite"`` or ``"postgres"``
``database_url``       session    a database migrated to head, shared by the session
``engine``             session    an Engine on ``database_url``
``session``            function   a Session whose work is rolled back after the test
``empty_database_url`` function   a fresh database without any table
``live_server``        session    base URL of a real uvicorn server on ``database_url``
``api``                session    an ``httpx.Client`` on ``live_server``'s ``/api/v1``
``serve``              session    ``with serve(Settings(...)) as url:`` more servers
``suite_token``        session    the secret of the admin token every test database has
=====================  =========  ==================================================

Authentication is on in every server the tests start, as in production: each
database made by ``database_url`` holds the admin token ``SUITE_TOKEN`` (a fresh
secret per test session), ``LAYERWATCH_TOKEN`` is set to it for every test (so
``layerwatch.Run``, ``Api`` and ``sync`` send it), and ``api`` sends it too.
Tests of authentication itself make tokens of their own.

Tests sharing a database keep out of each other's way with their own run ids
and project names (``uuid``), or through the rolled-back ``session``.

PostgreSQL: the tests create throw-away databases named
``layerwatch_test_<pid>_<random>`` on the server of ``LAYERWATCH_TEST_POSTGRES_URL``
(default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) and drop them
at the end. When that server cannot be reached the PostgreSQL tests are
skipped, unless ``LAYERWATCH_REQUIRE_POSTGRES=1`` (CI), which makes them fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from auth_headers import SUITE_TOKEN
from layerwatch_server.cli.serving import serve_in_thread
from layerwatch_server.config import Settings
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.main import create_app
from layerwatch_server.migrate import upgrade_database
from layerwatch_server.store.tokens import create_token

POSTGRES_URL_ENV = "LAYERWATCH_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REQUIRE_POSTGRES_ENV = "LAYERWATCH_REQUIRE_POSTGRES"

# Real servers and databases answer in their own time: no per-example deadline.
# The same examples on every run, so a suite that passed passes again (CI lands on it);
# `HYPOTHESIS_PROFILE=explore` draws new ones, to look for what the fixed ones miss.
hypothesis_settings.register_profile("layerwatch", deadline=None, derandomize=True)
hypothesis_settings.register_profile("explore", deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "layerwatch"))


@pytest.fixture(autouse=True)
def spool_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$LAYERWATCH_SPOOL_DIR`` per test, so no run spools into the home folder."""
    root = tmp_path_factory.mktemp("spool")
    monkeypatch.setenv("LAYERWATCH_SPOOL_DIR", str(root))
    return root


@pytest.fixture(scope="session", autouse=True)
def _suite_token_in_environment() -> Iterator[None]:
    """Every client the tests make sends the suite's admin token, as a user's would.

    Session-wide, so that session fixtures training real runs send it too.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("LAYERWATCH_TOKEN", SUITE_TOKEN)
        yield


@pytest.fixture(scope="session")
def suite_token() -> str:
    return SUITE_TOKEN


def add_suite_token(engine: Engine) -> None:
    """Give a migrated database the suite's admin token."""
    _, write = make_sessionmakers(engine)
    with managed_session(write) as session:
        create_token(session, name="suite-admin", scope="admin", secret=SUITE_TOKEN)


# -- PostgreSQL ----------------------------------------------------------------------


class PostgresServer:
    """Creates throw-away databases on one PostgreSQL server and drops them again."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self._admin = create_engine(
            self.url,
            isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE refuse a transaction
            poolclass=NullPool,
            connect_args={"connect_timeout": 5},
        )
        self._databases: list[str] = []

    @property
    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def check(self) -> None:
        with self._admin.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"layerwatch_test_{os.getpid()}_{secrets.token_hex(4)}"
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self._admin.connect() as connection:
            # FORCE ends sessions still open on it (PostgreSQL 13+).
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._databases.remove(name)

    def close(self) -> None:
        for name in list(self._databases):
            self.drop_database(self.url.set(database=name).render_as_string(False))
        self._admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server the tests may create databases on; skips when it is down."""
    server = PostgresServer(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    try:
        server.check()
    except DBAPIError as error:
        server.close()
        message = (
            f"PostgreSQL at {server.safe_url} is not reachable "
            f"({' '.join(str(error.orig).split())}); "
            f"set {POSTGRES_URL_ENV} to a server where databases may be created"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_POSTGRES_ENV}=1)", pytrace=False)
        pytest.skip(message)
    yield server
    server.close()


# -- databases -----------------------------------------------------------------------


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: ``"sqlite"`` or ``"postgres"``."""
    name: str = request.param
    if name == "postgres":
        request.getfixturevalue("postgres_server")  # skip (or fail) early when it is down
    return name


def _new_database(
    backend: str, request: pytest.FixtureRequest, folder: Path
) -> tuple[str, Callable[[], None]]:
    """(url, drop) of a new empty database of ``backend``."""
    if backend == "sqlite":
        path = folder / f"layerwatch-{secrets.token_hex(4)}.db"
        return f"sqlite:///{path}", lambda: None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    return url, lambda: server.drop_database(url)


@pytest.fixture(scope="session")
def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of a database migrated to head, one per backend for the whole session."""
    url, drop = _new_database(backend, request, tmp_path_factory.mktemp(backend))
    engine = make_engine(url)
    try:
        upgrade_database(engine)
        add_suite_token(engine)
    finally:
        engine.dispose()
    yield url
    drop()


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """URL of a brand-new database without any table, dropped after the test."""
    url, drop = _new_database(backend, request, tmp_path)
    yield url
    drop()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    """An Engine on the migrated ``database_url``, with the server's SQLite settings."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A Session whose every change is rolled back when the test ends.

    The test runs inside one outer transaction; ``session.commit()`` and
    ``session.rollback()`` end a SAVEPOINT within it, so a test can mirror the
    server's unit of work (commit on success, roll back on any error) and
    still leave the database as it found it.
    """
    with engine.connect() as connection:
        transaction = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


# -- servers -------------------------------------------------------------------------


def running_server(settings: Settings, *, timeout: float = 30.0) -> AbstractContextManager[str]:
    """A real server for ``settings`` on a free 127.0.0.1 port; yields its base URL."""
    return serve_in_thread(create_app(settings), timeout=timeout)


@pytest.fixture(scope="session")
def serve() -> Callable[[Settings], AbstractContextManager[str]]:
    """Start further real servers: ``with serve(Settings(database_url=...)) as url:``."""
    return running_server


@pytest.fixture(scope="session")
def live_server(database_url: str) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:<port>``) of a real server on ``database_url``."""
    with running_server(Settings(database_url=database_url)) as url:
        yield url


@pytest.fixture(scope="session")
def api(live_server: str) -> Iterator[httpx.Client]:
    """An ``httpx.Client`` with ``base_url`` ``<live_server>/api/v1``, shared by the session."""
    headers = {"Authorization": f"Bearer {SUITE_TOKEN}"}
    with httpx.Client(base_url=f"{live_server}/api/v1", timeout=10, headers=headers) as client:
        yield client
