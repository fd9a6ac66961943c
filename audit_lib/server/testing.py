"""Start the real reference server on 127.0.0.1 in a background thread (tests, benchmark).

    with running_server("small_cnn:small-cnn-32", weights, keys={"sk-test": {}}) as url:
        httpx.post(f"{url}/v1/embed/images", ...)
        url.stats.embed_requests   # what the server received

The yielded value is the base URL (a ``str``) carrying ``.stats`` (server-side counters),
``.port`` and ``.app``. The server is a real uvicorn server on a real socket; it stops when
the block ends.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunningServer(str):
    """A base URL such as ``http://127.0.0.1:41234`` with the server's counters attached."""

    app: Any
    port: int

    @property
    def url(self) -> str:
        return str(self)

    @property
    def stats(self):  # noqa: ANN201 - ServerStats
        return self.app.state.stats


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def running_server(architecture: str | None = None, weights_path: Path | str | None = None,
                   keys: dict[str, dict[str, Any]] | None = None, *, encoder: Any = None,
                   host: str = "127.0.0.1", port: int = 0, max_batch: int = 256,
                   batch_size: int | None = None, startup_timeout_s: float = 30.0,
                   **limits: Any) -> Iterator[RunningServer]:
    """Serve a checkpoint (``architecture`` + ``weights_path``) or an in-memory ``encoder``
    handle; ``keys`` maps API key -> settings as in a keys file (None: anonymous access);
    ``limits`` go to :func:`audit_lib.server.app.create_app` (``max_request_bytes``,
    ``max_request_pixels``, ``docs``)."""
    from audit_lib.server.app import create_app
    from audit_lib.server.keys import KeyRing

    if encoder is None:
        if architecture is None or weights_path is None:
            raise ValueError("running_server: give architecture and weights_path, or an encoder")
        from audit_lib.encoders.local import LocalEncoder

        encoder = LocalEncoder.from_checkpoint(architecture, Path(weights_path), batch_size=batch_size)
    app = create_app(encoder, KeyRing(keys) if keys else None, max_batch=max_batch,
                     allow_anonymous=not keys, **limits)
    with serve_app(app, host=host, port=port, startup_timeout_s=startup_timeout_s,
                   name="the reference server") as base:
        url = RunningServer(base)
        url.app = app
        url.port = int(base.rsplit(":", 1)[1])
        log.info("reference server listening on %s", url)
        yield url


@contextmanager
def serve_app(app: Any, *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0,
              name: str = "the server") -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn on a real socket of ``host`` in a background
    thread (port 0: a free one); yields the base URL and stops the server when the block
    ends. The reference server and the tests' vendor stubs start this way."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"{name} on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
