"""Shared fixtures: the evidence store on real PostgreSQL and on SQLite, real images."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Before anything imports airflow or open_clip: no hub, no example DAGs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest
from sqlalchemy import text

from audit_lib.config import PROJECT_ROOT, get_settings

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
FACES = SHARED_DATA / "faces" / "orl"


def copy_photos(dst: Path, files: list[Path]) -> Path:
    """A fresh photo folder ``dst`` holding ``files`` (named person-file, so names stay unique)."""
    import shutil

    dst.mkdir(parents=True)
    for f in files:
        shutil.copy(f, dst / f"{f.parent.name}-{f.name}")
    return dst
PG_ADMIN_URL = os.environ.get("AUDIT_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


_HELD: dict[str, int] = {}


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``var/locks/NAME.lock`` (re-entrant within a process) while
    a session fixture fills a shared training cache, so two test workers (or two sessions)
    never train the same artefact at once: the second waits, then loads it from the cache."""
    if _HELD.get(name):
        _HELD[name] += 1
        try:
            yield
        finally:
            _HELD[name] -= 1
        return
    from audit_lib.zoo.build import cache_lock as file_lock

    with file_lock(PROJECT_ROOT / "var" / "locks", name):
        _HELD[name] = 1
        try:
            yield
        finally:
            _HELD[name] = 0


def _pg_create(name: str) -> str:
    from audit_lib.store.db import create_database

    return create_database(PG_ADMIN_URL, name)


def _pg_drop(name: str) -> None:
    from audit_lib.store.db import drop_database

    drop_database(PG_ADMIN_URL, name)


@pytest.fixture(scope="session")
def pg_database_url():
    """A fresh, migrated PostgreSQL database for this test session (dropped afterwards)."""
    from audit_lib.store import upgrade

    name = f"encoder_audit_test_{uuid.uuid4().hex[:8]}"
    url = _pg_create(name)
    upgrade(url)
    yield url
    _pg_drop(name)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory):
    from audit_lib.store import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'evidence.sqlite'}"
    upgrade(url)
    return url


def _clear(url: str) -> None:
    from audit_lib.store.db import get_engine
    from audit_lib.store.models import Base

    # Wiping a test store is an owner's act past the append-only triggers (migrations 0003,
    # 0005): PostgreSQL's replica role skips them; SQLite's are dropped and re-created.
    with get_engine(url).begin() as conn:
        triggers: list[str] = []
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
            for name, sql in rows:
                conn.execute(text(f'DROP TRIGGER "{name}"'))
                triggers.append(sql)
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
        for sql in triggers:
            conn.execute(text(sql))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, monkeypatch, tmp_path):
    """An empty, migrated evidence store on each backend, selected via AUDIT_DATABASE_URL."""
    url = request.getfixturevalue(f"{request.param}_database_url" if request.param == "sqlite"
                                  else "pg_database_url")
    _clear(url)
    monkeypatch.setenv("AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("AUDIT_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
def face_dir(tmp_path) -> Path:
    """Three real face photos of one ORL person, copied to a temporary folder."""
    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")
    out = tmp_path / "photos"
    out.mkdir()
    for i in (1, 2, 3):
        (out / f"{i}.pgm").write_bytes((FACES / "s1" / f"{i}.pgm").read_bytes())
    return out
