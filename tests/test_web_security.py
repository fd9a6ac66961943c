"""API-level tests of every security point of the DPO web app: sign-in walls,
roles, CSRF, cookie flags, upload limits, content sniffing, paths, secrets."""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from audit_lib.reports.release import Decision, record_release
from audit_lib.store import session_scope
from audit_lib.store.models import DataSubject, ImageBlob, Report, WebAuditEvent
from tests.fixtures_web import (DPO, SUBJECT_FORM, TEST_SECRET, VIEWER, csrf_from, face_upload,
                                make_client)

PAGES = ["/", "/subjects", "/subjects/new", "/subjects/1", "/subjects/1/erase", "/audit-log",
         "/reports/1", "/subjects/1/images/1.png"]


def _n_subjects(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(DataSubject))


def _register(web, **overrides) -> int:
    token = web.token()
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": token, **overrides},
                        files=[face_upload("photos", i) for i in (1, 2, 3)], follow_redirects=False)
    assert r.status_code == 303, r.text
    return int(r.headers["location"].split("/")[2].split("?")[0])


# --- every page behind sign-in ---------------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_redirected_to_login(web, path):
    r = web.client.get(path, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


def test_anonymous_post_writes_nothing(web, web_store):
    r = web.client.post("/subjects", data=SUBJECT_FORM, files=[face_upload("photos", 1)],
                        follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert _n_subjects(web_store) == 0


def test_wrong_password_refused_and_logged_without_the_name(web, web_store):
    page = web.client.get("/login")
    r = web.client.post("/login", data={"username": DPO[0], "password": "not-the-password",
                                         "csrf_token": csrf_from(page.text)})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303
    with session_scope(web_store) as s:
        events = s.scalars(select(WebAuditEvent)).all()
        assert [(e.action, e.username) for e in events] == [("sign_in_failed", None)]
        assert "not-the-password" not in str([e.detail for e in events])


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example",
                                    "javascript:alert(1)"])
def test_login_next_cannot_leave_the_site(web, target):
    page = web.client.get("/login")
    r = web.client.post("/login", data={"username": DPO[0], "password": DPO[1], "next": target,
                                        "csrf_token": csrf_from(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/subjects"


def test_login_next_keeps_a_local_page(web):
    page = web.client.get("/login?next=/audit-log")
    r = web.client.post("/login", data={"username": DPO[0], "password": DPO[1], "next": "/audit-log",
                                        "csrf_token": csrf_from(page.text)}, follow_redirects=False)
    assert r.headers["location"] == "/audit-log"


# --- roles -------------------------------------------------------------------------------

def test_viewer_cannot_register_or_erase(web, web_store):
    web.sign_in(DPO)
    sid = _register(web)
    web.client.cookies.clear()
    web.sign_in(VIEWER)
    token = web.token("/subjects")
    assert web.client.get("/subjects").status_code == 200
    assert web.client.get(f"/subjects/{sid}").status_code == 200
    assert web.client.get("/subjects/new").status_code == 403
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "name": "Eve Viewer", "csrf_token": token},
                        files=[face_upload("photos", 4)])
    assert r.status_code == 403 and "may view subjects but not register" in r.text
    assert web.client.get(f"/subjects/{sid}/erase").status_code == 403
    r = web.client.post(f"/subjects/{sid}/erase", data={"confirm": "yes", "csrf_token": token})
    assert r.status_code == 403
    assert web.client.get("/audit-log").status_code == 403
    assert web.client.get(f"/subjects/{sid}/images/1.png").status_code == 403
    assert _n_subjects(web_store) == 1
    with session_scope(web_store) as s:
        assert s.get(DataSubject, sid).erased_at is None


def test_role_is_read_from_the_store_not_the_cookie(web, web_store):
    from audit_lib.store.models import WebUser

    web.sign_in(DPO)
    assert web.client.get("/subjects/new").status_code == 200
    with session_scope(web_store) as s:
        s.scalar(select(WebUser).where(WebUser.username == DPO[0])).role = "viewer"
    assert web.client.get("/subjects/new").status_code == 403


def test_password_change_ends_sessions(web, web_store):
    from audit_lib.store.models import WebUser
    from audit_lib.web.passwords import hash_password

    web.sign_in(DPO)
    with session_scope(web_store) as s:
        s.scalar(select(WebUser).where(WebUser.username == DPO[0])).password_hash = \
            hash_password("a-brand-new-password")
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303


# --- CSRF --------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_register_without_valid_csrf_is_refused(web, web_store, token):
    web.sign_in()
    data = dict(SUBJECT_FORM) | ({} if token is None else {"csrf_token": token})
    r = web.client.post("/subjects", data=data, files=[face_upload("photos", 1)])
    assert r.status_code == 403 and "CSRF" in r.text
    assert _n_subjects(web_store) == 0


def test_csrf_token_of_another_session_is_refused(web, web_store, tmp_path):
    other = make_client(tmp_path)
    other.sign_in(DPO)
    foreign_token = other.token()
    web.sign_in(DPO)
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": foreign_token},
                        files=[face_upload("photos", 1)])
    assert r.status_code == 403
    assert _n_subjects(web_store) == 0


def test_cross_origin_post_is_refused_even_with_the_token(web, web_store):
    web.sign_in()
    token = web.token()
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": token},
                        files=[face_upload("photos", 1)], headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert _n_subjects(web_store) == 0


def test_erase_without_csrf_is_refused(web, web_store):
    web.sign_in()
    sid = _register(web)
    for data in ({"confirm": "yes"}, {"confirm": "yes", "csrf_token": "forged"}):
        assert web.client.post(f"/subjects/{sid}/erase", data=data).status_code == 403
    with session_scope(web_store) as s:
        assert s.get(DataSubject, sid).name == SUBJECT_FORM["name"]


def test_login_and_logout_need_csrf(web):
    r = web.client.post("/login", data={"username": DPO[0], "password": DPO[1]})
    assert r.status_code == 403
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303
    web.sign_in()
    assert web.client.post("/logout", data={}).status_code == 403
    assert web.client.get("/subjects").status_code == 200  # still signed in


def test_sign_in_starts_a_new_csrf_token(web):
    before = csrf_from(web.client.get("/login").text)
    web.sign_in()
    assert web.token() != before


# --- cookies -----------------------------------------------------------------------------

def _session_cookie_header(client) -> str:
    r = client.get("/login")
    return next(v for k, v in r.headers.multi_items()
                if k == "set-cookie" and v.startswith("ea_session="))


def test_session_cookie_flags_default(web):
    header = _session_cookie_header(web.client).lower()
    assert "httponly" in header and "samesite=lax" in header and "path=/" in header
    assert "secure" not in header.replace("samesite", "")


def test_session_cookie_secure_and_strict_when_configured(web_store, tmp_path):
    client = make_client(tmp_path, cookie_secure=True, cookie_samesite="strict").client
    header = _session_cookie_header(client).lower()
    assert "; secure" in header and "samesite=strict" in header and "httponly" in header


def test_forged_or_expired_cookie_is_anonymous(web, web_store, monkeypatch):
    from audit_lib.web import sessions

    web.sign_in()
    value = web.client.cookies.get("ea_session")
    body, _, sig = value.partition(".")
    forged = sessions.encode(sessions.SessionData(1, "x", 0, None), b"not-the-key" * 4)
    web.client.cookies.clear()
    web.client.cookies.set("ea_session", value)
    assert web.client.get("/subjects", follow_redirects=False).status_code == 200  # the real one
    for bad in (body + ".AAAA" + sig[4:], forged, "garbage", body):
        web.client.cookies.clear()
        web.client.cookies.set("ea_session", bad)
        assert web.client.get("/subjects", follow_redirects=False).status_code == 303
    # a valid signature but an issue time older than the maximum age
    old = sessions.SessionData(1, "tok", 1_000, "fp")
    web.client.cookies.clear()
    web.client.cookies.set("ea_session", sessions.encode(old, TEST_SECRET.encode()))
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303


# --- uploads -----------------------------------------------------------------------------

def test_oversized_request_is_refused_with_a_message(web_store, tmp_path):
    w = make_client(tmp_path, max_request_bytes=20_000)
    w.sign_in()
    token = w.token()
    r = w.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": token},
                      files=[face_upload("photos", i) for i in (1, 2, 3)])  # ~3 x 10 kB
    assert r.status_code == 413
    assert "The upload is too large: one request may send at most 19.5 kB in all" in r.text
    assert _n_subjects(web_store) == 0


def test_oversized_streamed_body_without_length_is_cut_off(web_store, tmp_path):
    w = make_client(tmp_path, max_request_bytes=10_000)
    w.sign_in()

    def chunks():
        for _ in range(50):
            yield b"x" * 1000

    r = w.client.post("/subjects", content=chunks(),
                      headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert "content-length" not in r.request.headers  # streamed, no declared length
    assert r.status_code == 413 and "at most 9.8 kB in all" in r.text
    assert _n_subjects(web_store) == 0


def test_oversized_file_is_refused_next_to_its_field(web, web_store, monkeypatch):
    monkeypatch.setenv("AUDIT_MAX_IMAGE_BYTES", "5000")  # ORL photos are ~10 kB
    from audit_lib.config import get_settings

    get_settings.cache_clear()
    web.sign_in()
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": web.token()},
                        files=[face_upload("photos", 1)])
    assert r.status_code == 400
    assert "1.pgm: 10" in r.text and "over the limit of 5000 bytes" in r.text
    assert 'id="photos-error-1"' in r.text
    assert _n_subjects(web_store) == 0


def test_too_many_files_refused(web_store, tmp_path):
    w = make_client(tmp_path, max_files=2)
    w.sign_in()
    r = w.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": w.token()},
                      files=[face_upload("photos", i) for i in (1, 2, 3)])
    assert r.status_code == 400 and "Too many files" in r.text
    assert _n_subjects(web_store) == 0


def test_text_named_jpg_is_refused_whatever_the_client_says(web, web_store):
    web.sign_in()
    fake = ("photos", ("portrait.jpg", b"just some text, not pixels\n" * 20, "image/jpeg"))
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": web.token()},
                        files=[face_upload("photos", 1), fake])
    assert r.status_code == 400
    assert "portrait.jpg: not an image" in r.text
    assert _n_subjects(web_store) == 0
    with session_scope(web_store) as s:
        assert s.scalar(select(func.count()).select_from(ImageBlob)) == 0


def test_type_comes_from_the_bytes_not_the_name(web, web_store):
    web.sign_in()
    buf = io.BytesIO()
    Image.open(io.BytesIO(face_upload("x", 1)[1][1])).save(buf, "PNG")
    disguised = ("photos", ("notes.txt", buf.getvalue(), "text/plain"))
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": web.token()},
                        files=[disguised], follow_redirects=False)
    assert r.status_code == 303
    with session_scope(web_store) as s:
        assert s.scalars(select(ImageBlob.media_type)).all() == ["image/png"]


# --- paths -------------------------------------------------------------------------------

def test_upload_file_names_never_reach_the_filesystem(web, web_store, tmp_path):
    web.sign_in()
    before = {p for p in tmp_path.rglob("*")}
    name = "../../../../tmp/" + tmp_path.name + "/escaped.pgm"
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": web.token()},
                        files=[face_upload("photos", 1, name=name)], follow_redirects=False)
    assert r.status_code == 303
    created = {p for p in tmp_path.rglob("*")} - before
    assert not any("escaped" in p.name for p in created)
    assert not Path("/tmp/escaped.pgm").exists()


@pytest.mark.parametrize("path", ["/reports/..%2F..%2F..%2Fetc%2Fpasswd", "/reports/../../etc/passwd",
                                  "/subjects/1%2F..%2F..", "/subjects/..%2Fetc/erase",
                                  "/static/..%2F..%2Fpyproject.toml", "/static/web.css%2F..%2F..%2Fconftest.py",
                                  "/reports/%2Fetc%2Fpasswd", "/subjects/1/images/..%2F..%2Fetc.png",
                                  "/subjects/1/images/%2Fetc%2Fpasswd"])
def test_traversal_in_urls_finds_nothing(web, path):
    web.sign_in()
    r = web.client.get(path)
    assert r.status_code == 404
    assert "root:" not in r.text and "[project]" not in r.text


def _report(url: str, path: str, case: str = "subject:1") -> int:
    with session_scope(url) as s:
        row = Report(case_id=case, kind="subject", path=path, sha256="0" * 64, finding_ids=[])
        s.add(row)
        s.flush()
        record_release(s, row, Decision("dora", row.created_at), path, "0" * 64, "test")  # released
        return row.id


def _pdf_bytes() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_reports_served_only_when_registered_and_inside_the_folder(web, web_store, tmp_path):
    web.sign_in()
    pdf = _pdf_bytes()
    (web.reports_dir / "case-1.pdf").write_bytes(pdf)
    (web.reports_dir / "unregistered.pdf").write_bytes(pdf)
    outside = tmp_path / "outside.pdf"
    outside.write_bytes(pdf)
    (web.reports_dir / "link.pdf").symlink_to(outside)
    ok_rel = _report(web_store, "case-1.pdf", "subject:a")
    ok_abs = _report(web_store, str(web.reports_dir / "case-1.pdf"), "subject:b")
    bad = [_report(web_store, p, f"bad:{i}") for i, p in enumerate(
        ["../outside.pdf", str(outside), "/etc/passwd", "../../../../etc/passwd",
         str(web.reports_dir / "link.pdf"), str(web.reports_dir), "missing.pdf"])]
    for rid in (ok_rel, ok_abs):
        r = web.client.get(f"/reports/{rid}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        assert r.content == pdf
    for rid in bad:
        assert web.client.get(f"/reports/{rid}").status_code == 404
    assert web.client.get("/reports/unregistered.pdf").status_code == 404
    with session_scope(web_store) as s:
        downloads = s.scalars(select(WebAuditEvent.target)
                              .where(WebAuditEvent.action == "report_downloaded")).all()
        assert sorted(downloads) == ["subject:a", "subject:b"]


def test_user_text_is_escaped_never_markup(web, web_store):
    web.sign_in()
    name = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    r = web.client.post("/subjects", data={**SUBJECT_FORM, "name": name, "csrf_token": web.token()},
                        files=[face_upload("photos", 1)])
    assert r.status_code == 200 and "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;" in r.text
    listing = web.client.get("/subjects?erased=<b>1</b>").text
    assert "<script>alert" not in listing and "<b>1</b>" not in listing


# --- secrets and headers ------------------------------------------------------------------

def test_signing_key_generated_once_private_and_never_logged(web_store, monkeypatch, caplog):
    from audit_lib.web.app import create_app
    from audit_lib.web.settings import SECRET_FILE_NAME, WebSettings

    monkeypatch.delenv("AUDIT_WEB_SECRET_KEY", raising=False)
    caplog.set_level(logging.DEBUG)
    app1 = create_app(WebSettings())
    path = Path(os.environ["AUDIT_DATA_DIR"]) / SECRET_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    app2 = create_app(WebSettings())
    assert app1.state.secret_key == app2.state.secret_key == path.read_text().strip().encode()
    assert len(app1.state.secret_key) >= 32
    assert path.read_text().strip() not in caplog.text


def test_short_configured_key_is_refused(web_store, monkeypatch):
    from audit_lib.web.app import create_app
    from audit_lib.web.settings import WebSettings

    monkeypatch.setenv("AUDIT_WEB_SECRET_KEY", "short")
    with pytest.raises(ValueError, match="too short") as info:
        create_app(WebSettings())
    assert "short" not in str(info.value).replace("too short", "")


def test_security_headers(web):
    r = web.client.get("/login")
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert "server" not in r.headers or "uvicorn" not in r.headers["server"]


def test_passwords_are_salted_scrypt_hashes():
    from audit_lib.web.passwords import hash_password, verify_password

    a, b = hash_password("same password here"), hash_password("same password here")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("same password here", a) and verify_password("same password here", b)
    assert not verify_password("same password herE", a)
    assert not verify_password("same password here", "scrypt$1$1$1$!!$!!")
    assert not verify_password("x" * 5000, a)


# --- malformed input is a 4xx, never a 500 -------------------------------------------------

@pytest.mark.parametrize("value", ["caf\u00e9.sig\u00e9", "\u00ff" * 40 + ".x", "a.b.c\u00e9"])
def test_non_ascii_session_cookie_is_anonymous_not_a_crash(web, value):
    # Sent raw (latin-1 bytes), as a browser or a script can.
    cookie = f"ea_session={value}".encode("latin-1")
    r = web.client.get("/subjects", headers={"cookie": cookie}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert web.client.get("/login", headers={"cookie": cookie}).status_code == 200


def test_out_of_range_and_non_numeric_ids_are_404(web_db, tmp_path):
    web = make_client(tmp_path)
    web.sign_in()
    for path in ("/subjects/{id}", "/subjects/{id}/erase", "/reports/{id}",
                 "/subjects/{id}/images/1.png", "/subjects/1/images/{id}.png"):
        for bad_id in ("99999999999999999999", "9223372036854775808", "-1", "0", "abc", "1e3"):
            r = web.client.get(path.format(id=bad_id), follow_redirects=False)
            assert r.status_code == 404, (path, bad_id, r.status_code, r.text[:200])
            assert r.headers["x-frame-options"] == "DENY"
    assert web.client.get("/subjects").status_code == 200  # the next request is fine


def test_huge_id_in_a_post_is_404(web_db, tmp_path):
    web = make_client(tmp_path)
    web.sign_in()
    token = web.token("/subjects")
    r = web.client.post("/subjects/99999999999999999999/erase",
                        data={"csrf_token": token, "confirm": "yes"}, follow_redirects=False)
    assert r.status_code == 404


def test_nul_in_form_fields_is_400_and_writes_nothing(web_db, tmp_path):
    web = make_client(tmp_path)
    page = web.client.get("/login")
    r = web.client.post("/login", data={"username": "dora\x00", "password": DPO[1],
                                        "csrf_token": csrf_from(page.text)})
    assert r.status_code == 400 and "NUL character" in r.text
    web.sign_in()
    token = web.token()
    for field in ("name", "aliases", "legal_basis", "sex"):
        r = web.client.post("/subjects", data={**SUBJECT_FORM, field: "Ada\x00Example",
                                               "csrf_token": token},
                            files=[face_upload("photos", i) for i in (1, 2, 3)], follow_redirects=False)
        assert r.status_code == 400 and "NUL character" in r.text, field
    assert _n_subjects(web_db) == 0
    assert web.client.get("/subjects").status_code == 200


def test_a_crash_is_a_500_page_with_the_security_headers(web_store, tmp_path, monkeypatch, caplog):
    from audit_lib import registry

    web = make_client(tmp_path, raise_server_exceptions=False)
    web.sign_in()

    def broken(session):  # noqa: ANN001 - an injected fault: a bug deep in a page
        raise RuntimeError("injected failure")

    monkeypatch.setattr(registry, "list_subjects", broken)
    with caplog.at_level(logging.ERROR):
        r = web.client.get("/subjects")
    assert r.status_code == 500 and "Something went wrong" in r.text
    assert "injected failure" not in r.text
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert any("injected failure" in (rec.exc_text or "") for rec in caplog.records)


# --- server-side sessions ----------------------------------------------------------------

def test_sign_out_revokes_the_session_even_for_a_copied_cookie(web_db, tmp_path):
    web = make_client(tmp_path)
    web.sign_in()
    copied = web.client.cookies.get("ea_session")
    assert web.client.get("/subjects", follow_redirects=False).status_code == 200
    r = web.client.post("/logout", data={"csrf_token": web.token("/subjects")}, follow_redirects=False)
    assert r.status_code == 303
    web.client.cookies.clear()
    web.client.cookies.set("ea_session", copied)
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303


def test_password_change_revokes_every_session(web_db, tmp_path):
    from audit_lib.store.models import WebSession, WebUser
    from audit_lib.web.users import set_password

    first, second = make_client(tmp_path), make_client(tmp_path)
    first.sign_in()
    second.sign_in()
    with session_scope(web_db) as s:
        user = s.scalar(select(WebUser).where(WebUser.username == DPO[0]))
        assert set_password(s, user, "a-brand-new-password") == 2
    for web in (first, second):
        assert web.client.get("/subjects", follow_redirects=False).status_code == 303
    with session_scope(web_db) as s:
        rows = s.scalars(select(WebSession)).all()
        assert len(rows) == 2 and all(r.revoked_at is not None for r in rows)
        token = first.client.cookies.get("ea_session")
        assert all(r.id not in token for r in rows)  # the table holds digests only


def test_a_cookie_without_a_session_row_is_anonymous(web, web_store):
    from audit_lib.web import sessions

    # A correctly signed cookie for a real user, but never issued by sign-in.
    with session_scope(web_store) as s:
        from audit_lib.store.models import WebUser

        user = s.scalar(select(WebUser).where(WebUser.username == DPO[0]))
        made = sessions.new_session(user.id, user.password_hash)
    web.client.cookies.set("ea_session", sessions.encode(made, TEST_SECRET.encode()))
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303


# --- sign-in throttling --------------------------------------------------------------------

def _try(web, username: str, password: str):  # noqa: ANN202
    page = web.client.get("/login")
    return web.client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": csrf_from(page.text)}, follow_redirects=False)


def test_failed_sign_ins_are_throttled_per_user(web_store, tmp_path):
    attacker = make_client(tmp_path, peer=("203.0.113.7", 4000))
    for _ in range(5):
        assert _try(attacker, DPO[0], "wrong-password-xx").status_code == 401
    r = _try(attacker, DPO[0], DPO[1])  # even the right password: the account is throttled
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 900
    assert "Too many failed sign-ins" in r.text and r.headers["x-frame-options"] == "DENY"
    # from another address the same user is throttled too (the guesses are per user) ...
    other = make_client(tmp_path, peer=("198.51.100.2", 4000))
    other.client.app.state.signin_throttle = attacker.client.app.state.signin_throttle
    assert _try(other, DPO[0], DPO[1]).status_code == 429
    # ... but another user from another address is not
    assert _try(other, VIEWER[0], VIEWER[1]).status_code == 303
    with session_scope(web_store) as s:
        actions = s.scalars(select(WebAuditEvent.action)).all()
        assert actions.count("sign_in_failed") == 5 and actions.count("sign_in_throttled") == 2


def test_failed_sign_ins_are_throttled_per_client(web_store, tmp_path):
    web = make_client(tmp_path, peer=("203.0.113.8", 4000), signin_max_failures=3)
    for name in ("alice", "bob", "carol"):  # names that do not exist: still counted
        assert _try(web, name, "wrong-password-xx").status_code == 401
    assert _try(web, VIEWER[0], VIEWER[1]).status_code == 429


def test_throttle_window_passes(web_store, tmp_path):
    web = make_client(tmp_path, signin_max_failures=1, signin_window_s=1)
    assert _try(web, DPO[0], "wrong-password-xx").status_code == 401
    assert _try(web, DPO[0], DPO[1]).status_code == 429
    import time

    time.sleep(1.1)
    assert _try(web, DPO[0], DPO[1]).status_code == 303


# --- forwarded headers -----------------------------------------------------------------------

def _last_client(url: str) -> str | None:
    with session_scope(url) as s:
        return s.scalars(select(WebAuditEvent.client).order_by(WebAuditEvent.id.desc())).first()


def test_forwarded_for_is_ignored_unless_from_a_trusted_proxy(web_store, tmp_path):
    forged = {"x-forwarded-for": "192.0.2.99"}
    local = make_client(tmp_path, peer=("127.0.0.1", 4000))
    page = local.client.get("/login")
    local.client.post("/login", data={"username": "x1", "password": "wrong-password-xx",
                                      "csrf_token": csrf_from(page.text)}, headers=forged)
    assert _last_client(web_store) == "127.0.0.1"  # localhost is not trusted by default

    proxied = make_client(tmp_path, peer=("10.0.0.5", 4000), trusted_proxies="10.0.0.0/24")
    page = proxied.client.get("/login")
    proxied.client.post("/login", data={"username": "x1", "password": "wrong-password-xx",
                                        "csrf_token": csrf_from(page.text)},
                        headers={"x-forwarded-for": "198.51.100.1, 192.0.2.7, 10.0.0.4"})
    # the nearest address that is not a trusted proxy: what the proxy itself saw
    assert _last_client(web_store) == "192.0.2.7"


def test_bad_trusted_proxies_setting_is_refused_with_the_fix():
    from pydantic import ValidationError

    from audit_lib.web.settings import WebSettings

    with pytest.raises(ValidationError, match="not an address or network"):
        WebSettings(trusted_proxies="10.0.0.0/8, proxy.example")


def test_data_folder_created_private(web_store, tmp_path, monkeypatch):
    from audit_lib.config import get_settings

    folder = tmp_path / "fresh-data"
    monkeypatch.setenv("AUDIT_DATA_DIR", str(folder))
    get_settings.cache_clear()
    from audit_lib.web.app import create_app
    from audit_lib.web.settings import WebSettings

    create_app(WebSettings(reports_dir=tmp_path / "r"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "web-secret-key").stat().st_mode) == 0o600
