"""Request dependencies: who is signed in, role checks, CSRF, and page rendering.

Every page depends on :data:`CurrentUser` (anonymous -> redirect to the login page) or
:data:`DpoUser` (a viewer -> 403). Every POST handler calls :func:`check_csrf` before it
looks at anything else in the form.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Path, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from audit_lib.store import session_scope
from audit_lib.store.models import WebUser
from audit_lib.web import session_store, sessions
from audit_lib.web.sessions import COOKIE_NAME, SessionData
from audit_lib.web.settings import WebSettings
from audit_lib.web.users import SignedInUser

CSRF_FIELD = "csrf_token"
CSRF_MESSAGE = ("The form could not be accepted: its security token is missing or out of date "
                "(CSRF check). Reload the page and submit it again.")
NUL_MESSAGE = ("The form could not be accepted: a field holds a NUL character (code 0). "
               "Remove it (it is often pasted by accident) and submit again.")
# The largest id a store row can have (a signed 64-bit integer, SQLite's and PostgreSQL's
# bigint): a bigger number in a path names nothing and is answered 404 before any query.
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


class LoginRequired(Exception):
    """Raised for an anonymous request to a page; answered with a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def web_settings(request: Request) -> WebSettings:
    return request.app.state.web_settings


def session_data(request: Request) -> SessionData | None:
    """The request's valid session cookie, or None."""
    if not hasattr(request.state, "session_data"):
        settings = web_settings(request)
        request.state.session_data = sessions.decode(
            request.cookies.get(COOKIE_NAME), request.app.state.secret_key, settings.session_max_age_s)
    return request.state.session_data


def current_user(request: Request) -> SignedInUser:
    """The signed-in user, re-read from the store (role changes apply at once; a changed
    password ends old sessions)."""
    data = session_data(request)
    user = None
    if data is not None and data.user_id is not None:
        with session_scope() as s:
            row = s.get(WebUser, data.user_id) if 1 <= data.user_id <= MAX_ROW_ID else None
            if (row is not None and data.password_fp == sessions.password_fingerprint(row.password_hash)
                    and session_store.is_live(s, data.session_token, row.id)):
                user = SignedInUser(id=row.id, username=row.username, role=row.role)
    if user is None:
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        raise LoginRequired(path if request.method == "GET" else "/subjects")
    request.state.user = user
    return user


def dpo_user(user: Annotated[SignedInUser, Depends(current_user)]) -> SignedInUser:
    """The signed-in user if a DPO; a viewer gets 403."""
    if not user.is_dpo:
        raise HTTPException(status_code=403, detail=(
            f"Your role ({user.role}) may view subjects but not register or erase them. "
            "Ask a data protection officer."))
    return user


CurrentUser = Annotated[SignedInUser, Depends(current_user)]
DpoUser = Annotated[SignedInUser, Depends(dpo_user)]


def check_csrf(request: Request, form: FormData) -> None:
    """Refuse a POST whose form token does not match the session's (403), or that comes
    from another origin; then refuse a form with a NUL character in any text field (400:
    PostgreSQL cannot store one, and no legitimate form value holds one)."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise HTTPException(status_code=403, detail=CSRF_MESSAGE)
    data = session_data(request)
    sent = form.get(CSRF_FIELD)
    if data is None or not isinstance(sent, str) or not hmac.compare_digest(
            sent.encode("utf-8", "surrogatepass"), data.csrf_token.encode()):
        raise HTTPException(status_code=403, detail=CSRF_MESSAGE)
    if any(isinstance(v, str) and "\x00" in v for _, v in form.multi_items()):
        raise HTTPException(status_code=400, detail=NUL_MESSAGE)


def safe_next(target: str | None) -> str:
    """A local path to go to after sign-in; anything else (other hosts, ``//host``,
    backslashes, schemes) becomes the subject list. Prevents open redirects."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 32 for c in target)):
        return "/subjects"
    return target


def login_redirect_url(next_path: str) -> str:
    return "/login?next=" + quote(safe_next(next_path), safe="/")


def client_of(request: Request) -> str | None:
    """The client's address: the peer's, unless the peer is a proxy listed in
    ``AUDIT_WEB_TRUSTED_PROXIES``; then the nearest address in ``X-Forwarded-For`` that is
    not itself a trusted proxy. A forwarded header from anyone else is ignored (it is
    whatever the client chose to write)."""
    peer = request.client.host if request.client else None
    trusted = web_settings(request).trusted_proxy_networks
    if peer is None or not trusted or not _in_networks(peer, trusted):
        return peer
    forwarded = [a.strip() for a in ",".join(request.headers.getlist("x-forwarded-for")).split(",")]
    for address in reversed([a for a in forwarded if a]):
        if not _in_networks(address, trusted):
            return address if _is_ip(address) else peer
    return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _in_networks(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def set_session_cookie(request: Request, response: Response, data: SessionData) -> None:
    """Send the session cookie: HttpOnly, SameSite from settings, Secure if configured."""
    settings = web_settings(request)
    response.set_cookie(COOKIE_NAME, sessions.encode(data, request.app.state.secret_key),
                        max_age=settings.session_max_age_s, path="/", httponly=True,
                        samesite=settings.cookie_samesite, secure=settings.cookie_secure)
    request.state.session_data = data


def render(request: Request, template: str, context: dict[str, Any] | None = None,
           status_code: int = 200) -> HTMLResponse:
    """Render a page with the signed-in user and the CSRF token in its context."""
    data = session_data(request)
    ctx = {"user": getattr(request.state, "user", None),
           "csrf_token": data.csrf_token if data else "", **(context or {})}
    return request.app.state.templates.TemplateResponse(request, template, ctx,
                                                        status_code=status_code)
