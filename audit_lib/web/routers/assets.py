"""The stylesheet: one fixed file, read from ``templates/web/``; no path from the request."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter
from fastapi.responses import Response

from audit_lib.config import PROJECT_ROOT

router = APIRouter(tags=["assets"])

STYLESHEET = PROJECT_ROOT / "templates" / "web" / "web.css"


@lru_cache(maxsize=1)
def _css() -> bytes:
    return STYLESHEET.read_bytes()


@router.get("/static/web.css")
def stylesheet() -> Response:
    return Response(_css(), media_type="text/css")
