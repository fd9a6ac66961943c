"""Signed session cookies (HMAC-SHA256 over a small JSON payload, stdlib only).

The cookie carries the user id, the per-session CSRF token, the issue time, a
fingerprint of the user's password hash (so a password change ends every session) and,
for a signed-in user, a random session token whose sha256 names a server-side row
(:mod:`audit_lib.web.session_store`), so that signing out revokes the session even if the
cookie was copied. The user's role is re-read from the store on every request, never
trusted from the cookie. An anonymous session (user None) exists only to carry the CSRF
token of the login form. A malformed cookie (non-ASCII, bad signature, bad JSON) is no
session at all, never an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "ea_session"


@dataclass(frozen=True)
class SessionData:
    """What a valid session cookie says."""

    user_id: int | None
    csrf_token: str
    issued_at: int
    password_fp: str | None = None
    session_token: str | None = None  # names the server-side session row (signed-in only)


def password_fingerprint(password_hash: str) -> str:
    """A short digest of the stored hash: changes when the password does."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def new_session(user_id: int | None = None, password_hash: str | None = None) -> SessionData:
    """A fresh session with a new CSRF token (issued at sign-in and for the login form)."""
    return SessionData(user_id=user_id, csrf_token=secrets.token_urlsafe(32),
                       issued_at=int(time.time()),
                       password_fp=password_fingerprint(password_hash) if password_hash else None,
                       session_token=secrets.token_urlsafe(32) if user_id is not None else None)


def _sign(key: bytes, body: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode().rstrip("=")


def encode(data: SessionData, key: bytes) -> str:
    """The cookie value: base64(json) '.' base64(hmac)."""
    payload = {"u": data.user_id, "c": data.csrf_token, "t": data.issued_at, "k": data.password_fp,
               "s": data.session_token}
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{body.decode()}.{_sign(key, body)}"


def decode(value: str | None, key: bytes, max_age_s: int) -> SessionData | None:
    """The session in a cookie value, or None when it is absent, forged, malformed or
    older than ``max_age_s``."""
    if not value or len(value) > 4096 or "." not in value or not value.isascii():
        return None
    body, _, signature = value.partition(".")
    if not hmac.compare_digest(_sign(key, body.encode()), signature):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        data = SessionData(user_id=payload["u"], csrf_token=str(payload["c"]),
                           issued_at=int(payload["t"]), password_fp=payload.get("k"),
                           session_token=payload.get("s"))
    except (ValueError, KeyError, TypeError):
        return None
    if data.user_id is not None and not (isinstance(data.user_id, int)
                                         and isinstance(data.session_token, str)):
        return None
    if not 0 <= time.time() - data.issued_at <= max_age_s:
        return None
    return data
