"""Which database errors mean "the database cannot be reached now" (503, retry) and which are
bugs (500, fail): app.db.database_unavailable."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from app.db import database_unavailable


class _PgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def operational(orig: BaseException) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (operational(_PgError(None)), True),  # connection refused, closed by the server
        (operational(_PgError("08006")), True),  # connection failure
        (operational(_PgError("57P01")), True),  # admin shutdown
        (operational(_PgError("57P03")), True),  # cannot connect now (starting up)
        (operational(_PgError("53300")), True),  # too many connections
        (operational(_PgError("42P01")), False),  # undefined table: a bug, not an outage
        (operational(_PgError("40P01")), False),  # deadlock: not an outage
        (operational(sqlite3.OperationalError("database is locked")), True),
        (operational(sqlite3.OperationalError("unable to open database file")), True),
        (operational(sqlite3.OperationalError("no such table: jobs")), False),
        (operational(sqlite3.OperationalError('near "SELEC": syntax error')), False),
        (sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")), True),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
        (sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_database_unavailable(error: BaseException, unavailable: bool) -> None:
    assert database_unavailable(error) is unavailable


def test_an_invalidated_connection_is_unavailable() -> None:
    error = sa_exc.DBAPIError(
        "SELECT 1", {}, Exception("server closed"), connection_invalidated=True
    )
    assert database_unavailable(error)
