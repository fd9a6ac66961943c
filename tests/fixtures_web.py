"""Fixtures for the DPO web app: a store with a dpo and a viewer, a TestClient, helpers.

Loaded as a pytest plugin by the root conftest.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from audit_lib.config import get_settings

DPO = ("dora", "dpo-password-1234")
VIEWER = ("victor", "viewer-password-1234")
TEST_SECRET = "test-secret-key-" + "0123456789abcdef" * 3
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_from(html: str) -> str:
    """The CSRF token a page carries in its forms."""
    match = CSRF_RE.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def clear_store(url: str) -> None:
    """Empty every table (past the append-only triggers: see ``tests.conftest._clear``)."""
    from tests.conftest import _clear

    _clear(url)


@lru_cache(maxsize=4)
def _hash(password: str) -> str:
    from audit_lib.web.passwords import hash_password

    return hash_password(password)


def add_web_users(url: str) -> None:
    """The two test users, with their scrypt hashes computed once per test session (each
    hash costs ~0.1 s; ``add_user`` itself is tested on its own)."""
    from audit_lib.store import session_scope
    from audit_lib.store.models import WebUser

    with session_scope(url) as s:
        s.add(WebUser(username=DPO[0], password_hash=_hash(DPO[1]), role="dpo"))
        s.add(WebUser(username=VIEWER[0], password_hash=_hash(VIEWER[1]), role="viewer"))


def web_store_at(url: str, monkeypatch, tmp_path) -> Iterator[str]:  # noqa: ANN001 - pytest objects
    """The store at ``url`` emptied, with users ``dora`` (dpo) and ``victor`` (viewer),
    selected through AUDIT_DATABASE_URL; AUDIT_DATA_DIR is a fresh temporary folder."""
    clear_store(url)
    monkeypatch.setenv("AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("AUDIT_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    add_web_users(url)
    yield url
    get_settings.cache_clear()


@pytest.fixture
def web_store(sqlite_database_url, monkeypatch, tmp_path) -> Iterator[str]:
    """An empty migrated SQLite store with users ``dora`` (dpo) and ``victor`` (viewer),
    selected through AUDIT_DATABASE_URL; AUDIT_DATA_DIR is a fresh temporary folder."""
    yield from web_store_at(sqlite_database_url, monkeypatch, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def web_db(request, monkeypatch, tmp_path) -> Iterator[str]:
    """As ``web_store``, on SQLite and on PostgreSQL in turn."""
    url = request.getfixturevalue("sqlite_database_url" if request.param == "sqlite"
                                  else "pg_database_url")
    yield from web_store_at(url, monkeypatch, tmp_path)


@dataclass
class WebClient:
    """A TestClient with sign-in helpers."""

    client: object  # fastapi.testclient.TestClient
    reports_dir: Path

    def sign_in(self, who: tuple[str, str] = DPO) -> None:
        page = self.client.get("/login")
        response = self.client.post("/login", data={"username": who[0], "password": who[1],
                                                    "csrf_token": csrf_from(page.text)},
                                    follow_redirects=False)
        assert response.status_code == 303, response.text

    def token(self, path: str = "/subjects/new") -> str:
        return csrf_from(self.client.get(path).text)


def make_client(tmp_path: Path, raise_server_exceptions: bool = True,
                peer: tuple[str, int] = ("testclient", 50000), **settings_overrides: object) -> WebClient:
    """A client of a fresh app; ``peer`` is the address the app sees the client at."""
    from fastapi.testclient import TestClient

    from audit_lib.web.app import create_app
    from audit_lib.web.settings import WebSettings

    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True)
    settings = WebSettings(secret_key=TEST_SECRET, reports_dir=reports, **settings_overrides)
    return WebClient(TestClient(create_app(settings), raise_server_exceptions=raise_server_exceptions,
                                client=peer), reports)


@pytest.fixture
def web(web_store, tmp_path) -> WebClient:
    """A client of the app on ``web_store`` (not signed in)."""
    return make_client(tmp_path)


def face_upload(field: str, i: int, name: str | None = None) -> tuple:
    """A real ORL face photo as a multipart file tuple."""
    from tests.conftest import FACES

    data = (FACES / "s1" / f"{i}.pgm").read_bytes()
    return (field, (name or f"{i}.pgm", data, "image/x-portable-graymap"))


HYPOTHESES = {"idia": "H0: the model was not trained on images of this person",
              "encoder_mi": "H0: none of the claimed images was in the training set"}

SUBJECT_FORM = {"name": "Ada Example", "legal_basis": "GDPR Art. 6(1)(c)",
                "aliases": "A. Example\nAda E.", "sex": "f"}


def seed_finding(url: str, sid: int, model_name: str, method: str, p: float, decision: str,
                 run_key: str, effect_size: float = 1.5) -> int:
    """Store a finding about subject ``sid`` the way the audit DAG does (a model, a model
    version, a run, ``store_finding``); returns its id."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.evidence import start_run, store_finding
    from audit_lib.findings import FindingResult
    from audit_lib.store import session_scope
    from audit_lib.store.models import ModelVersion

    with session_scope(url) as s:
        try:
            model = registry.get_model(s, model_name)
        except registry.RegistryError:
            model = registry.add_model(s, name=model_name, kind="api", role="suspect",
                                       capabilities="image,text",
                                       endpoint_url="http://127.0.0.1:9/embed")
        version = s.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id))
        if version is None:
            version = ModelVersion(model_id=model.id, how="canary",
                                   version=hashlib.sha256(model_name.encode()).hexdigest())
            s.add(version)
            s.flush()
        run = start_run(s, run_key, "privacy")
        row, _ = store_finding(s, run, FindingResult(
            method=method, method_version="1", hypothesis=HYPOTHESES.get(method, "H0"),
            statistic=3.0, null_description="decoys scored alike", p_value=p, alpha=0.05,
            decision=decision, effect_size=effect_size), target_key=f"subject:{sid}",
            model_version_id=version.id, subject_id=sid)
        return row.id
