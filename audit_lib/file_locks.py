"""One cross-process file lock (``flock``) for everything on this machine that must take
turns: building a cached artefact (the zoo, suspect zoos) and a SQLite evidence store's
named locks (:mod:`audit_lib.store.locks`)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path | str, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (created owner-only if missing) while the
    block runs. Yields False, holding nothing, when ``wait`` is False and another process
    holds it. Closing the descriptor releases the lock, also when the process dies."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
