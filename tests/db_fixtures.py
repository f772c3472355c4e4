"""Database fixtures: a throw-away PostgreSQL database per test session, SQLite files, and
sessions whose work is rolled back after each test.

PostgreSQL: ``TASKGROUPER_TEST_DATABASE_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) names a maintenance database; the
fixtures never write to it, they only ``CREATE DATABASE taskgrouper_test_<random>`` through it
(and drop that database afterwards). If the server cannot be reached, tests that need it are
skipped, or fail when ``CI`` is set (CI must not go green by skipping them). Mark such tests
``@pytest.mark.postgres``.

Import the fixtures into ``tests/conftest.py`` (see the module's ``__all__``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import Engine, create_engine, make_url, pool
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import make_engine, normalise_url, upgrade

__all__ = [
    "database_url",
    "pg_engine",
    "postgres_empty_url",
    "rolled_back_session",
    "session",
    "sqlite_engine",
    "sqlite_session",
    "sqlite_url",
]

TEST_DATABASE_URL_ENV = "TASKGROUPER_TEST_DATABASE_URL"
DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 3

_unreachable: dict[str, str] = {}  # admin URL -> why; a dead server is tried once per session


def _admin_url() -> str:
    return normalise_url(os.environ.get(TEST_DATABASE_URL_ENV) or DEFAULT_TEST_DATABASE_URL)


def _unavailable(admin_url: str, reason: str) -> NoReturn:
    shown = make_url(admin_url).render_as_string(hide_password=True)
    message = (
        f"PostgreSQL is not reachable at {shown} ({reason}). Start it "
        f"(pg_ctlcluster --skip-systemctl-redirect <version> main start) or point "
        f"{TEST_DATABASE_URL_ENV} at a server where this user may CREATE DATABASE."
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _admin_engine(admin_url: str) -> Engine:
    return create_engine(
        admin_url,
        isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE cannot run in a transaction
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


@contextmanager
def fresh_postgres_database(admin_url: str | None = None) -> Iterator[str]:
    """Create an empty database ``taskgrouper_test_<random>``; yield its URL; drop it.

    Skips (or, under ``CI``, fails) when the server cannot be reached.
    """
    admin_url = admin_url or _admin_url()
    if admin_url in _unreachable:
        _unavailable(admin_url, _unreachable[admin_url])
    name = f"taskgrouper_test_{secrets.token_hex(6)}"
    admin = _admin_engine(admin_url)
    try:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except OperationalError as error:
            _unreachable[admin_url] = str(error.orig or error).strip()
            _unavailable(admin_url, _unreachable[admin_url])
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@contextmanager
def rolled_back_session(engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back at the end.

    ``join_transaction_mode="create_savepoint"``: the session runs in a SAVEPOINT of the outer
    transaction, so code under test may ``commit()`` (releasing the savepoint) or ``rollback()``
    and the test still leaves nothing behind.
    """
    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            session.close()
            if outer.is_active:
                outer.rollback()


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of this test session's own PostgreSQL database, migrated to head; dropped after."""
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def pg_engine(database_url: str) -> Iterator[Engine]:
    """The engine of :func:`database_url`, shared by the session's tests."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(pg_engine: Engine) -> Iterator[Session]:
    """A PostgreSQL session whose work (committed or not) is rolled back after the test."""
    with rolled_back_session(pg_engine) as db_session:
        yield db_session


@pytest.fixture
def postgres_empty_url() -> Iterator[str]:
    """A fresh, empty (unmigrated) PostgreSQL database for one test, e.g. migration tests."""
    with fresh_postgres_database() as url:
        yield url


# --------------------------------------------------------------------------------------------
# SQLite


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of an SQLite file in a temporary directory, migrated to head."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "taskgrouper.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_session(sqlite_engine: Engine) -> Iterator[Session]:
    """An SQLite session whose work (committed or not) is rolled back after the test."""
    with rolled_back_session(sqlite_engine) as db_session:
        yield db_session
