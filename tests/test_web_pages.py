"""The DPO pages over HTTP (TestClient), on PostgreSQL and SQLite: registration with the
CLI's validation and errors beside their fields, findings in plain words, reports,
erasure with confirmation, the audit log; and the `encoder-audit web` commands."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from sqlalchemy import func, inspect, select
from typer.testing import CliRunner

from audit_lib import registry
from audit_lib.reports.release import Decision, record_release
from audit_lib.store import session_scope
from audit_lib.store.db import get_engine
from audit_lib.store.models import DataSubject, Report, SubjectImage, WebAuditEvent, WebUser
from tests.fixtures_web import (DPO, SUBJECT_FORM, VIEWER, add_web_users, face_upload,
                                make_client, seed_finding)

ERROR_RE = re.compile(r'<p class="field-error" id="(\w+)-error-\d+" role="alert">([^<]*)</p>')


def field_errors(page: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for field, message in ERROR_RE.findall(page):
        out.setdefault(field, []).append(html_lib.unescape(message))
    return out


@pytest.fixture
def web_any(db_url, tmp_path):
    """A client on each backend (the conftest's ``db_url``), with the two users."""
    add_web_users(db_url)
    return make_client(tmp_path)


def _post_subject(w, data=None, files=None):
    return w.client.post("/subjects", data={**SUBJECT_FORM, "csrf_token": w.token(), **(data or {})},
                         files=files if files is not None else [face_upload("photos", i) for i in (1, 2, 3)],
                         follow_redirects=False)


def test_register_list_view_erase_on_both_backends(web_any, db_url):
    w = web_any
    w.sign_in(DPO)
    r = _post_subject(w, files=[face_upload("photos", 1), face_upload("photos", 2),
                                face_upload("claimed", 5)])
    assert r.status_code == 303
    sid = int(re.match(r"/subjects/(\d+)\?registered=1", r.headers["location"]).group(1))
    with session_scope(db_url) as s:
        subject = registry.get_subject(s, sid)
        assert subject.name == "Ada Example" and subject.aliases == ["A. Example", "Ada E."]
        assert subject.sex == "f" and subject.registered_by == DPO[0]
        assert sorted(i.role for i in subject.images) == ["claimed", "reference", "reference"]
        pseudonym = subject.pseudonym
        first_image = subject.images[0].id
    page = w.client.get(r.headers["location"])
    assert "Registered." in page.text and "GDPR Art. 6(1)(c)" in page.text
    assert "2 reference, 1 claimed" in page.text
    thumb = w.client.get(f"/subjects/{sid}/images/{first_image}.png")
    assert thumb.status_code == 200 and thumb.content[:8] == b"\x89PNG\r\n\x1a\n"
    listing = w.client.get("/subjects").text
    assert "Ada Example" in listing and pseudonym in listing and "not audited yet" in listing

    confirm = w.client.get(f"/subjects/{sid}/erase")
    assert "cannot be undone" in confirm.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', confirm.text).group(1)
    r = w.client.post(f"/subjects/{sid}/erase", data={"csrf_token": token})  # box not ticked
    assert r.status_code == 400 and "Tick the box" in r.text
    with session_scope(db_url) as s:
        assert s.get(DataSubject, sid).erased_at is None
    r = w.client.post(f"/subjects/{sid}/erase", data={"csrf_token": token, "confirm": "yes"},
                      follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/subjects?erased={sid}"
    listing = w.client.get(r.headers["location"]).text
    assert f"Subject {pseudonym} was erased" in listing and "Ada Example" not in listing
    assert w.client.get(f"/subjects/{sid}/images/{first_image}.png").status_code == 404
    again = w.client.post(f"/subjects/{sid}/erase", data={"csrf_token": token, "confirm": "yes"})
    assert again.status_code == 409 and "already erased" in again.text
    with session_scope(db_url) as s:
        subject = s.get(DataSubject, sid)
        assert subject.name is None and subject.erased_at is not None
        assert all(i.blob.data is None for i in subject.images)
        events = s.scalars(select(WebAuditEvent).order_by(WebAuditEvent.id)).all()
        actions = [(e.action, e.username, e.target) for e in events if e.subject_id == sid]
        assert ("subject_registered", DPO[0], pseudonym) in actions
        assert ("subject_viewed", DPO[0], pseudonym) in actions
        assert ("subject_erased", DPO[0], pseudonym) in actions
        assert "Ada" not in repr([(e.target, e.detail) for e in events])


def _cases(face_dir):
    return {
        "no name": ({"name": "  "}, None, {"name": "name: a subject needs a name"}),
        "no legal basis": ({"legal_basis": ""}, None,
                           {"legal_basis": "legal basis: state the legal basis"}),
        "bad sex": ({"sex": "x"}, None, {"sex": "sex: 'x' is not 'f' or 'm'"}),
        "no photos": ({}, [], {"photos": "photos: at least one reference photo is needed"}),
        "duplicate claimed": ({}, [face_upload("photos", 1), face_upload("claimed", 1, "copy.pgm")],
                              {"claimed": "copy.pgm: duplicate image for this subject"}),
        "long name": ({"name": "N" * 201}, None, {"name": "name: at most 200 characters"}),
    }


@pytest.mark.parametrize("case", ["no name", "no legal basis", "bad sex", "no photos",
                                  "duplicate claimed", "long name"])
def test_registration_errors_beside_their_fields(web, web_store, case):
    data, files, expected = _cases(None)[case]
    web.sign_in()
    r = _post_subject(web, data=data, files=files)
    assert r.status_code == 400
    errors = field_errors(r.text)
    for field, start in expected.items():
        assert any(m.startswith(start) for m in errors.get(field, [])), errors
    assert "value=\"Ada Example\"" in r.text or case in ("no name", "long name")  # values kept
    with session_scope(web_store) as s:
        assert s.scalar(select(func.count()).select_from(DataSubject)) == 0
        assert s.scalar(select(func.count()).select_from(SubjectImage)) == 0


def test_file_errors_and_field_errors_together(web, web_store):
    web.sign_in()
    bad = ("claimed", ("scan.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"))
    r = _post_subject(web, data={"name": ""}, files=[face_upload("photos", 1), bad])
    errors = field_errors(r.text)
    assert errors["name"] == ["name: a subject needs a name"]
    assert errors["claimed"][0].startswith("scan.png: ")
    assert any("choose them again" in m for m in errors["form"])


def test_the_web_and_the_cli_refuse_the_same_files(web, web_store, tmp_path):
    """One validation: the message for a bad file is the CLI's, with the web's file label."""
    from audit_lib.images import ImageError, check_image_file
    from audit_lib.registry import ImageLimits

    bad = tmp_path / "tiny.png"
    from PIL import Image

    Image.new("RGB", (16, 16), "white").save(bad)
    with pytest.raises(ImageError) as cli_error:
        check_image_file(bad, **ImageLimits.from_settings().as_kwargs())
    web.sign_in()
    r = _post_subject(web, files=[("photos", ("tiny.png", bad.read_bytes(), "image/png"))])
    expected = str(cli_error.value).replace(str(bad), "tiny.png")
    assert field_errors(r.text)["photos"] == [expected]


def test_findings_in_plain_words_latest_per_model_and_report_links(web, web_store):
    web.sign_in()
    sid = int(_post_subject(web).headers["location"].split("/")[2].split("?")[0])
    seed_finding(web_store, sid, "tiny-clip", "idia", 0.2, "negative", "run-1")
    newest = seed_finding(web_store, sid, "tiny-clip", "idia", 0.003, "positive", "run-2")
    seed_finding(web_store, sid, "simclr-suspect", "encoder_mi", 0.41, "negative", "run-2")
    pdf = web.reports_dir / "subject.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    with session_scope(web_store) as s:
        mine = Report(case_id=f"subject:{sid}", kind="subject", path="subject.pdf", sha256="c" * 64,
                      finding_ids=[newest])
        s.add(mine)
        s.flush()
        record_release(s, mine, Decision("dora", mine.created_at), "subject.pdf", "c" * 64, "test")
        s.add(Report(case_id="subject:999", kind="subject", path="other.pdf", sha256="d" * 64,
                     finding_ids=[]))
    page = web.client.get(f"/subjects/{sid}").text
    assert ("p = 0.003: if the model had not been trained on this person, a result at least "
            "this strong would happen at most 0.3% of the time") in page
    assert "p = 0.41: if the model had not been trained on these images" in page
    latest = page.split("Latest findings per model")[1].split("All findings")[0]
    assert "p = 0.2:" not in latest  # the older tiny-clip finding is not the latest
    assert latest.count('class="finding ') == 2
    assert "All findings" in page and "run-1" in page
    assert 'href="/reports/' in page and f"subject:{sid}" in page and "subject:999" not in page
    listing = web.client.get("/subjects").text
    assert "tiny-clip · identity: evidence found (p = 0.003)" in listing
    assert "simclr-suspect · membership: no evidence found (p = 0.41)" in listing


def test_audit_log_page_lists_who_did_what(web, web_store):
    web.sign_in()
    sid = int(_post_subject(web).headers["location"].split("/")[2].split("?")[0])
    web.client.get(f"/subjects/{sid}")
    page = web.client.get("/audit-log").text
    rows = re.findall(r'<tr><td>[^<]*</td><td>([^<]*)</td><td><span class="action action-(\w+)">', page)
    assert (DPO[0], "audit_log_viewed") == rows[0]
    assert {(DPO[0], "subject_registered"), (DPO[0], "subject_viewed"), (DPO[0], "sign_in")} <= set(rows)


def test_logout_ends_the_session(web):
    web.sign_in()
    token = web.token("/subjects")
    r = web.client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert web.client.get("/subjects", follow_redirects=False).status_code == 303


# --- the CLI ------------------------------------------------------------------------------

def test_cli_add_user_from_env_and_sign_in(web_store, tmp_path, monkeypatch):
    from audit_lib.cli import app

    runner = CliRunner()
    monkeypatch.setenv("NEW_DPO_PASSWORD", "a-long-enough-password")
    r = runner.invoke(app, ["web", "add-user", "paula", "--role", "dpo",
                            "--password-env", "NEW_DPO_PASSWORD"])
    assert r.exit_code == 0, r.output
    assert "a-long-enough-password" not in r.output
    with session_scope(web_store) as s:
        user = s.scalar(select(WebUser).where(WebUser.username == "paula"))
        assert user.role == "dpo" and user.password_hash.startswith("scrypt$")
        assert "a-long-enough-password" not in user.password_hash
    w = make_client(tmp_path)
    w.sign_in(("paula", "a-long-enough-password"))
    assert w.client.get("/subjects/new").status_code == 200


@pytest.mark.parametrize("args, env, message", [
    (["--role", "dpo", "--password-env", "UNSET_VAR_X"], {}, "UNSET_VAR_X is not set"),
    (["--role", "admin", "--password-env", "PW"], {"PW": "long enough password"}, "role: 'admin'"),
    (["--role", "dpo", "--password-env", "PW"], {"PW": "short"}, "at least 12 characters"),
])
def test_cli_add_user_refusals(web_store, monkeypatch, args, env, message):
    from audit_lib.cli import app

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(app, ["web", "add-user", "newbie", *args])
    assert r.exit_code == 2 and message in r.output
    with session_scope(web_store) as s:
        assert s.scalar(select(WebUser).where(WebUser.username == "newbie")) is None


def test_cli_add_user_prompts_and_refuses_taken_names(web_store):
    from audit_lib.cli import app

    r = CliRunner().invoke(app, ["web", "add-user", "pat", "--role", "viewer"],
                           input="prompted password 1\nprompted password 1\n")
    assert r.exit_code == 0 and "added web user pat (viewer)" in r.output
    r = CliRunner().invoke(app, ["web", "add-user", VIEWER[0], "--role", "viewer"],
                           input="prompted password 1\nprompted password 1\n")
    assert r.exit_code == 2 and "already exists" in r.output


def test_migration_0002_downgrades_cleanly(tmp_path):
    from alembic import command

    from audit_lib.store import upgrade
    from audit_lib.store.db import alembic_config

    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    upgrade(url)
    assert {"web_users", "web_audit_log"} <= set(inspect(get_engine(url)).get_table_names())
    command.downgrade(alembic_config(url), "0001")
    names = set(inspect(get_engine(url)).get_table_names())
    assert not names & {"web_users", "web_audit_log"} and "data_subjects" in names
