"""Named locks shared by every process that writes to one evidence store.

:func:`store_lock` makes concurrent tasks (Airflow workers, possibly on other machines) take
turns at one piece of work, so the second one reads the first one's result from the store
instead of doing it again: IDIA's decoy text set of a model version is embedded once even
when two chunks of the same model start side by side (:mod:`audit_lib.encoders.cache`).

- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a connection of its
  own, in autocommit mode, so waiting and holding keep no transaction open; the key is the
  first 8 bytes of sha256(name). If the holder's process dies, the server ends its session
  and the lock goes with it.
- SQLite: an exclusive ``flock`` on a file beside the database file (``<file>.lock``, owner
  only); every process on the machine that opens the store sees it. The file serves every
  name: a SQLite store has one writer at a time anyway.
- An in-memory database belongs to one connection of one process: nothing to share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text


def advisory_key(name: str) -> int:
    """The signed 64-bit key of a PostgreSQL advisory lock for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


@contextmanager
def store_lock(name: str, url: str | None = None) -> Iterator[None]:
    """Hold the lock ``name`` on the evidence store ``url`` (default: the configured one)
    while the block runs; another holder of the same name makes this wait."""
    from audit_lib.store.db import get_engine

    engine = get_engine(url)
    if engine.dialect.name == "postgresql":
        key = advisory_key(name)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    from audit_lib.file_locks import file_lock

    with file_lock(f"{database}.lock"):
        yield
