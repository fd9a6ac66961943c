"""Sign-in and sign-out. The login form has its own CSRF token (an anonymous session),
and a successful sign-in starts a new session with a new token (no session fixation),
recorded server-side; sign-out revokes it. Failed sign-ins are throttled per user name and
per client address (:mod:`audit_lib.web.throttle`). The password check (scrypt, ~0.1 s of
CPU) and every query run in the thread pool, never on the event loop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from audit_lib.store import session_scope
from audit_lib.web import audit_log, session_store, sessions
from audit_lib.web.deps import (LoginRequired, check_csrf, client_of, current_user, render,
                                safe_next, session_data, set_session_cookie, web_settings)
from audit_lib.web.throttle import SignInThrottle
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


def throttle_of(request: Request) -> SignInThrottle:
    """The app's sign-in throttle (made on first use from the settings)."""
    state = request.app.state
    if getattr(state, "signin_throttle", None) is None:
        settings = web_settings(request)
        state.signin_throttle = SignInThrottle(settings.signin_max_failures, settings.signin_window_s)
    return state.signin_throttle


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the password; on success start a fresh session and go on."""
    form = await request.form(max_files=0, max_fields=10)
    check_csrf(request, form)
    username = str(form.get("username") or "")[:MAX_FIELD_CHARS].strip()
    password = str(form.get("password") or "")[:MAX_FIELD_CHARS]
    target = safe_next(str(form.get("next") or ""))
    return await run_in_threadpool(_sign_in, request, username, password, target)


def _sign_in(request: Request, username: str, password: str, target: str) -> Response:
    throttle, client = throttle_of(request), client_of(request)
    keys = throttle.keys(username, client)
    wait = throttle.retry_after(keys)
    if wait is not None:
        with session_scope() as s:
            audit_log.record(s, "sign_in_throttled", username=None, client=client)
        minutes = max(1, round(wait / 60))
        response = render(request, "login.html", {
            "next": target, "username": username,
            "error": f"Too many failed sign-ins: try again in about {minutes} minute"
                     f"{'s' if minutes != 1 else ''}."}, status_code=429)
        response.headers["Retry-After"] = str(wait)
        return response
    settings = web_settings(request)
    with session_scope() as s:
        user = authenticate(s, username, password) if username and password else None
        if user is None:
            # The typed name is not logged: people sometimes type a password into it.
            audit_log.record(s, "sign_in_failed", username=None, client=client)
        else:
            audit_log.record(s, "sign_in", username=user.username, client=client)
            data = sessions.new_session(user.id, user.password_hash)
            session_store.start(s, data.session_token, user.id, settings.session_max_age_s)
    if user is None:
        throttle.record_failure(keys)
        return render(request, "login.html", {"next": target, "username": username,
                                              "error": "Wrong user name or password."},
                      status_code=401)
    throttle.clear(keys[0])
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, data)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session: revoked server-side (a copy of the cookie is worthless from now
    on), and the cookie is replaced by a fresh anonymous one."""
    user = await run_in_threadpool(current_user, request)
    form = await request.form(max_files=0, max_fields=5)
    check_csrf(request, form)
    await run_in_threadpool(_sign_out, request, user.username)
    response = RedirectResponse("/login", status_code=303)
    set_session_cookie(request, response, sessions.new_session())
    return response


def _sign_out(request: Request, username: str) -> None:
    data = session_data(request)
    with session_scope() as s:
        if data is not None and data.session_token:
            session_store.revoke(s, data.session_token)
        audit_log.record(s, "sign_out", username=username, client=client_of(request))
