"""Alembic environment for taskgrouper.

The database URL, in order: the Config's ``sqlalchemy.url`` (set by ``app.db.upgrade``/``check``),
``alembic -x url=...``, ``TASKGROUPER_DATABASE_URL``, else the embedded SQLite file under the
configured data directory. The engine comes from ``app.db.make_engine``, so on SQLite too the
whole upgrade is one transaction (SQLAlchemy emits BEGIN; SQLite's DDL is transactional) and a
failed migration leaves the database as it was.

SQLite specifics: ALTERs are rendered in batch mode (copy the table, drop the old one, rename),
and migrations run with foreign keys OFF, because dropping the old copy of a parent table with
foreign keys on would cascade-delete its children. ``PRAGMA foreign_key_check`` runs before the
commit instead, and any violation rolls the upgrade back.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, pool

from app.db import DATABASE_URL_ENV, is_sqlite, make_engine, normalise_url
from app.tables import Base, UTCDateTime

config = context.config

# Only the alembic command line configures logging; in-process runs keep the caller's logging.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url") or os.environ.get(DATABASE_URL_ENV)
    if url:
        return normalise_url(url)
    from app.db import database_url
    from app.settings import get_settings

    return database_url(get_settings())


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render app-specific types as plain SQLAlchemy types: migrations never import ``app``."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) instead of running it."""
    url = _url()
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def _check_foreign_keys(connection: Connection) -> None:
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if violations:
        shown = ", ".join(
            f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in violations
        )
        raise RuntimeError(f"migration left foreign key violations (rolled back): {shown}")


def run_migrations_online() -> None:
    """Run the migrations on a live connection, all in one transaction."""
    engine = make_engine(_url(), foreign_keys=False, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            _configure(connection=connection, render_as_batch=sqlite, transactional_ddl=True)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    _check_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
