"""A real SMTP server on 127.0.0.1 for the tests (aiosmtpd), keeping what it receives.

``smtp_server`` starts one per test on a free port and points Airflow's SMTP connection
(``AIRFLOW_CONN_SMTP_DEFAULT``, plain SMTP on localhost: no TLS, no login) at it.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest


@dataclass
class Received:
    """One message as delivered: envelope recipients and the parsed message."""

    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """Every text part, decoded (HTML included), for content checks."""
        parts = [p.get_content() for p in self.message.walk() if p.get_content_maintype() == "text"]
        return "\n".join(parts)

    @property
    def attachments(self) -> list[str]:
        return [p.get_filename() or p.get_content_type() for p in self.message.iter_attachments()]


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 - aiosmtpd's API
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        self.received.append(Received(list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server(monkeypatch) -> Iterator[list[Received]]:
    """A running SMTP server; yields the list its messages arrive in."""
    from aiosmtpd.controller import Controller

    handler = _Handler()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10, "retry_limit": 0}}))
    try:
        yield handler.received
    finally:
        controller.stop()
