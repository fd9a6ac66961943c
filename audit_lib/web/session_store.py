"""Server-side sessions of the DPO web app (table ``web_sessions``).

A signed-in cookie is valid only while its row exists, is not revoked and has not
expired. Signing out revokes the row; a password change revokes every row of the user.
Rows are keyed by the sha256 of the cookie's token, so the table never holds a token that
could be replayed. Every function takes an open session (the caller's transaction).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from audit_lib.store.models import WebSession, utcnow


def token_id(token: str) -> str:
    """The row id of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def start(session: Session, token: str, user_id: int, max_age_s: int) -> None:
    """Record a new signed-in session (and forget the user's sessions that have expired:
    their cookies are refused by age already, so the rows only grow the table)."""
    session.execute(delete(WebSession).where(WebSession.user_id == user_id,
                                             WebSession.expires_at < utcnow()))
    session.add(WebSession(id=token_id(token), user_id=user_id,
                           expires_at=utcnow() + timedelta(seconds=max_age_s)))
    session.flush()


def is_live(session: Session, token: str, user_id: int) -> bool:
    """True when the token names an unrevoked, unexpired session of ``user_id``."""
    row = session.get(WebSession, token_id(token))
    if row is None or row.user_id != user_id or row.revoked_at is not None:
        return False
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
    return expires > utcnow()


def revoke(session: Session, token: str) -> None:
    """End one session (sign-out)."""
    session.execute(update(WebSession).where(WebSession.id == token_id(token),
                                             WebSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))


def revoke_all(session: Session, user_id: int) -> int:
    """End every session of a user (password change, account removal); returns how many."""
    ids = list(session.scalars(select(WebSession.id).where(WebSession.user_id == user_id,
                                                           WebSession.revoked_at.is_(None))))
    if ids:
        session.execute(update(WebSession).where(WebSession.id.in_(ids)).values(revoked_at=utcnow()))
    return len(ids)
