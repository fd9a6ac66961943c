"""Web users and their roles, stored in the evidence store (table ``web_users``).

Roles: ``dpo`` registers, views and erases subjects and reads the audit log; ``viewer``
only views. Every function takes an open session (the caller's transaction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit_lib.store.models import WebUser, utcnow
from audit_lib.web.passwords import burn_time, check_password_strength, hash_password, verify_password

ROLES = ("dpo", "viewer")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,99}$")


class UserError(ValueError):
    """A user-management request that cannot be carried out; says why."""


@dataclass(frozen=True)
class SignedInUser:
    """Who is making a request (detached from any database session)."""

    id: int
    username: str
    role: str

    @property
    def is_dpo(self) -> bool:
        return self.role == "dpo"


def add_user(session: Session, username: str, password: str, role: str) -> WebUser:
    """Create a user; refuses a bad name, an unknown role, a weak password or a taken name."""
    if not USERNAME_RE.match(username):
        raise UserError(f"username: {username!r} must be 2-100 characters of letters, digits "
                        "and . _ @ - (starting with a letter or digit)")
    if role not in ROLES:
        raise UserError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    try:
        check_password_strength(password)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if session.scalar(select(WebUser.id).where(WebUser.username == username)) is not None:
        raise UserError(f"username: {username!r} already exists")
    user = WebUser(username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> WebUser | None:
    """The user if the password matches, else None (same cost either way)."""
    user = session.scalar(select(WebUser).where(WebUser.username == username))
    if user is None:
        burn_time(password)
        return None
    if not verify_password(password, user.password_hash):
        return None
    user.last_login_at = utcnow()
    return user


def set_password(session: Session, user: WebUser, password: str) -> int:
    """Give ``user`` a new password and end every session they have (a stolen or
    forgotten session must not outlive the password it was opened with); returns how many
    sessions ended."""
    from audit_lib.web import session_store

    try:
        check_password_strength(password)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    user.password_hash = hash_password(password)
    session.flush()
    return session_store.revoke_all(session, user.id)


def list_users(session: Session) -> list[WebUser]:
    return list(session.scalars(select(WebUser).order_by(WebUser.username)))
