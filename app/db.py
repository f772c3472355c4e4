"""Engine and session factories, the database URL rules, and programmatic migrations.

Every function takes the database URL explicitly; nothing here reads global state except
:func:`database_url`, which applies the documented precedence once, at start-up.

Two back-ends are supported:

* **SQLite** (embedded mode, the default): ``sqlite:///<data_dir>/taskgrouper.db``. Foreign keys
  are switched on for every connection, the journal is WAL (readers never block the writer), and
  SQLAlchemy rather than the ``sqlite3`` module emits ``BEGIN``, so that transactions, savepoints
  and transactional DDL behave as they do on PostgreSQL.
* **PostgreSQL** through psycopg 3 (``postgresql+psycopg://``); ``postgres://`` and
  ``postgresql://`` URLs are rewritten to that driver by :func:`normalise_url`.

The schema is owned by Alembic (``migrations/`` beside this package); :func:`upgrade` and
:func:`check` run ``alembic upgrade head`` and ``alembic check`` in-process.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "ALEMBIC_INI",
    "DATABASE_URL_ENV",
    "MIGRATIONS_DIR",
    "alembic_config",
    "check",
    "database_unavailable",
    "database_url",
    "default_database_url",
    "downgrade",
    "for_writes",
    "is_sqlite",
    "make_engine",
    "make_sessionmaker",
    "normalise_url",
    "upgrade",
]

DATABASE_URL_ENV = "TASKGROUPER_DATABASE_URL"
"""The environment variable naming the database; unset means embedded SQLite under data_dir."""

_REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = _REPO_ROOT / "alembic.ini"
"""The project's ``alembic.ini`` (found relative to this file, so any working directory works)."""
MIGRATIONS_DIR = _REPO_ROOT / "migrations"
"""The Alembic script directory (``env.py``, ``versions/``)."""

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for another writer's lock before raising."""

SQLITE_BEGIN_OPTION = "taskgrouper_sqlite_begin"
"""Execution option naming the SQLite ``BEGIN`` mode of a connection's transactions
(``"IMMEDIATE"``: take the write lock at BEGIN); see :func:`for_writes`."""


class _HasDataDir(Protocol):
    @property
    def data_dir(self) -> Path: ...


_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")
"""PostgreSQL error classes of a server that cannot serve now: connection exceptions,
insufficient resources, operator intervention (shutting down, starting up)."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached right now (down, restarting, the
    connection lost, the pool exhausted, SQLite locked) rather than that a statement or the
    schema is wrong: the answer is to try again later (the API's 503, the worker's retry)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        message = str(orig).lower()
        return "locked" in message or "unable to open" in message or "disk i/o" in message
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:  # raised by the client: could not connect, connection closed
        return True
    return str(sqlstate).startswith(_UNAVAILABLE_SQLSTATES)


def default_database_url(data_dir: Path) -> str:
    """The embedded-mode URL: an SQLite file ``taskgrouper.db`` in ``data_dir`` (made absolute)."""
    path = Path(data_dir).expanduser().resolve() / "taskgrouper.db"
    return f"sqlite:///{path}"


def normalise_url(url: str) -> str:
    """Point PostgreSQL URLs at the psycopg 3 driver; leave every other URL as it is.

    ``postgres://`` (Heroku-style) and ``postgresql://`` (libpq-style) become
    ``postgresql+psycopg://``; a URL that already names a driver (``postgresql+psycopg://``,
    ``sqlite://``, ``sqlite+pysqlite://``) is returned unchanged.
    """
    url = url.strip()
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def database_url(settings: _HasDataDir, *, environ: dict[str, str] | None = None) -> str:
    """The service's database URL, normalised.

    Precedence: ``settings.database_url`` when the settings class has that field and it is set;
    else the ``TASKGROUPER_DATABASE_URL`` environment variable (``environ`` replaces
    ``os.environ`` in tests); else :func:`default_database_url` of ``settings.data_dir``.
    """
    env = os.environ if environ is None else environ
    explicit = getattr(settings, "database_url", None) or env.get(DATABASE_URL_ENV)
    if explicit:
        return normalise_url(str(explicit))
    return default_database_url(settings.data_dir)


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names an SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine, *, foreign_keys: bool) -> None:
    """Foreign keys (unless disabled) and WAL on every new connection; SQLAlchemy emits BEGIN.

    The ``sqlite3`` module's legacy transaction control does not BEGIN before SELECTs, DDL or
    SAVEPOINT, which breaks savepoints (``Session.begin_nested``) and transactional migrations.
    Setting ``isolation_level = None`` turns that off, and the ``begin`` hook emits a plain
    (deferred) ``BEGIN``; COMMIT and ROLLBACK are still issued by the driver.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def make_engine(url: str, *, foreign_keys: bool = True, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` (normalised first); ``kwargs`` go to ``create_engine``.

    SQLite: the parent directory is created, connections may cross threads
    (``check_same_thread=False``; the pool hands each to one thread at a time), foreign keys
    and WAL are on. ``foreign_keys=False`` is for migrations only: SQLite rebuilds a table to
    alter it, and dropping the old copy with foreign keys on would cascade-delete child rows.
    PostgreSQL: ``pool_pre_ping=True`` so a restarted server costs no request.
    """
    url = normalise_url(url)
    if is_sqlite(url):
        _prepare_sqlite_file(url)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        _install_sqlite_hooks(engine, foreign_keys=foreign_keys)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def for_writes(engine: Engine) -> Engine:
    """``engine`` for transactions that write: on SQLite, the same engine (same pool) whose
    transactions begin with ``BEGIN IMMEDIATE``; any other database, ``engine`` itself.

    A deferred SQLite transaction that reads and then writes must upgrade its read lock; when
    another connection has committed a write since the read began, SQLite refuses at once
    (``database is locked``, without waiting out the busy timeout), so two requests that each
    read and then insert (two job submissions) failed whenever they overlapped. Taking the
    write lock at BEGIN makes such transactions queue for it instead, within
    :data:`SQLITE_BUSY_TIMEOUT_S`. Reads keep plain deferred transactions, which never block.
    """
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})


def make_sessionmaker(engine: Engine, *, writes: bool = False) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit (``expire_on_commit=False``).

    Routes return rows after committing them; without this every attribute access would
    reload the row (or fail once the session is closed). ``writes=True`` binds the sessions to
    :func:`for_writes` of ``engine`` (the workers: nearly every transaction of theirs writes).
    """
    return sessionmaker(bind=for_writes(engine) if writes else engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` for the project's migrations, bound to ``url``.

    Logging is left alone (``configure_logger`` is False): migrations run inside the service
    and the tests, whose logging must not be replaced by ``alembic.ini``'s.
    """
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': a percent-encoded password must be escaped.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (``alembic upgrade head``)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision`` (``alembic downgrade base``)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """``alembic check``: raise if the models and the migrated database differ.

    Raises ``alembic.util.exc.AutogenerateDiffsDetected`` listing the differences when the
    database at ``url`` (already at head) does not match ``app.tables``; also raises
    ``CommandError`` when the database is not at head.
    """
    from alembic import command

    command.check(alembic_config(url))
