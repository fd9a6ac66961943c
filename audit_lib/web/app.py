"""The FastAPI application for DPOs: ``create_app()``; run it with ``encoder-audit web serve``.

Middleware, outermost first: security headers, then the request body limit. Errors become
pages: an anonymous request is sent to the login page, 403/404/413 say what happened.
"""

from __future__ import annotations

import logging
from datetime import datetime

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from audit_lib.config import PROJECT_ROOT
from audit_lib.web.deps import LoginRequired, login_redirect_url, render
from audit_lib.web.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from audit_lib.web.routers import assets, audit, auth, reports, subjects
from audit_lib.web.settings import WebSettings, get_web_settings, load_secret_key

log = logging.getLogger(__name__)

TEMPLATES_DIR = PROJECT_ROOT / "templates" / "web"
ERROR_TITLES = {400: "The request could not be read", 403: "Not allowed", 404: "Not found",
                405: "Not allowed", 409: "Conflict", 413: "Upload too large"}


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = lambda dt: dt.strftime("%Y-%m-%d %H:%M UTC") if isinstance(dt, datetime) else ""
    env.filters["day"] = lambda dt: dt.strftime("%Y-%m-%d") if isinstance(dt, datetime) else ""
    return Jinja2Templates(env=env)


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """Build the app: settings and the signing key are read once, here."""
    settings = settings or get_web_settings()
    app = FastAPI(title="encoder-audit: data protection officers", docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.web_settings = settings
    app.state.secret_key = load_secret_key(settings)
    app.state.templates = _templates()
    for module in (auth, subjects, reports, audit, assets):
        app.include_router(module.router)

    def error_page(request: Request, status: int, message: str) -> Response:
        return render(request, "error.html", {"status": status, "message": message,
                                              "title": ERROR_TITLES.get(status, "Error")},
                      status_code=status)

    def crash_page() -> bytes:
        html = app.state.templates.env.get_template("error.html").render(
            user=None, csrf_token="", status=500, title="Something went wrong",
            message="The server could not answer this request. It has been logged; try "
                    "again, and tell the administrator if it happens again.")
        return html.encode()

    def too_large_page(message: str) -> bytes:
        html = app.state.templates.env.get_template("error.html").render(
            user=None, csrf_token="", status=413, title=ERROR_TITLES[413], message=message)
        return html.encode()

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_redirect_url(exc.next_path), status_code=303)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else ERROR_TITLES.get(exc.status_code, "Error")
        if exc.status_code == 404 and message == "Not Found":
            message = "There is no such page."
        return error_page(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # Malformed ids in a path (/subjects/abc) name nothing that exists.
        return error_page(request, 404, "There is no such page.")

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes,
                       render=too_large_page)
    app.add_middleware(SecurityHeadersMiddleware, render_error=crash_page)
    log.info("web app ready (reports from %s)", settings.resolved_reports_dir)
    return app
