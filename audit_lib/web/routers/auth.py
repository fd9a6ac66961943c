"""Sign-in and sign-out. The login form has its own CSRF token (an anonymous session),
and a successful sign-in starts a new session with a new token (no session fixation)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from audit_lib.store import session_scope
from audit_lib.web import audit_log, sessions
from audit_lib.web.deps import (LoginRequired, check_csrf, client_of, current_user, render,
                                safe_next, session_data, set_session_cookie)
from audit_lib.web.users import authenticate

router = APIRouter(tags=["auth"])

MAX_FIELD_CHARS = 1024


def _signed_in(request: Request) -> bool:
    try:
        current_user(request)
    except LoginRequired:
        return False
    return True


@router.get("/login")
def login_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    """The sign-in page (or straight on, when already signed in)."""
    if _signed_in(request):
        return RedirectResponse(safe_next(next), status_code=303)
    fresh = sessions.new_session() if session_data(request) is None else None
    if fresh is not None:
        request.state.session_data = fresh  # the form below carries its token
    response = render(request, "login.html", {"next": safe_next(next), "error": None})
    if fresh is not None:
        set_session_cookie(request, response, fresh)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the password; on success start a fresh session and go on."""
    form = await request.form(max_files=0, max_fields=10)
    check_csrf(request, form)
    username = str(form.get("username") or "")[:MAX_FIELD_CHARS].strip()
    password = str(form.get("password") or "")[:MAX_FIELD_CHARS]
    target = safe_next(str(form.get("next") or ""))
    with session_scope() as s:
        user = authenticate(s, username, password) if username and password else None
        if user is None:
            # The typed name is not logged: people sometimes type a password into it.
            audit_log.record(s, "sign_in_failed", username=None, client=client_of(request))
        else:
            audit_log.record(s, "sign_in", username=user.username, client=client_of(request))
            data = sessions.new_session(user.id, user.password_hash)
    if user is None:
        return render(request, "login.html", {"next": target, "username": username,
                                              "error": "Wrong user name or password."},
                      status_code=401)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, data)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (the cookie is replaced by a fresh anonymous one)."""
    user = current_user(request)
    form = await request.form(max_files=0, max_fields=5)
    check_csrf(request, form)
    with session_scope() as s:
        audit_log.record(s, "sign_out", username=user.username, client=client_of(request))
    response = RedirectResponse("/login", status_code=303)
    set_session_cookie(request, response, sessions.new_session())
    return response
