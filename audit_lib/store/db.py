"""Engine, sessions and migrations for the evidence store.

One engine per URL, created on first use (never at import). A session is one
transaction: a command either writes everything or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from audit_lib.config import PROJECT_ROOT, get_settings

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: the configured evidence store), one per URL."""
    return _engine_for(url or get_settings().resolved_database_url)


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA secure_delete=ON")  # erased and purged content is zeroed in the file
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def private_sqlite_file(url: str) -> None:
    """Create a SQLite store's file owner-only (0600, its folder 0700 when created here), or
    tighten an existing one: it holds personal data. SQLite gives its WAL and shared-memory
    files the database file's mode. Nothing to do for other databases or ``:memory:``."""
    import os

    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: commit on success, roll back everything on any error."""
    session = sessionmaker(bind=get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def redacted_url(url: str) -> str:
    """A database URL fit for logs and output: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def create_database(server_url: str, name: str) -> str:
    """An empty PostgreSQL database ``name`` on the server of ``server_url`` (any database's
    URL there; one left by an earlier run is dropped first); returns its URL. For throwaway
    stores: benchmarks and tests."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    """Drop a database :func:`create_database` made: this process's pooled connections to it
    closed, any other session on it ended."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    get_engine(server.set(database=name).render_as_string(hide_password=False)).dispose()
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        admin.dispose()


def checkpoint_sqlite(url: str | None = None) -> None:
    """Fold SQLite's write-ahead log into the database file and truncate it, so that content
    an erasure removed (zeroed by ``secure_delete``) survives in neither file. Nothing to do
    on PostgreSQL (its dead tuples are not readable through SQL and are vacuumed)."""
    engine = get_engine(url)
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def alembic_config(url: str | None = None):  # noqa: ANN201 - alembic.config.Config
    """An Alembic config pointing at our migrations and the given database (default: the
    owner role's URL, ``AUDIT_MIGRATION_DATABASE_URL``, else the evidence store's)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url",
                        (url or get_settings().resolved_migration_database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Run the migrations up to ``revision``."""
    from alembic import command

    cfg = alembic_config(url)
    private_sqlite_file(cfg.get_main_option("sqlalchemy.url"))
    command.upgrade(cfg, revision)
