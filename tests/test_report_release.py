"""Approval before release: `evidence_reports` renders a draft, waits in Airflow's
human-in-the-loop step, and only an approved report is signed, recorded as released and
offered; a rejected one is kept, never signed, never offered.

The review is answered the way the UI does it: through Airflow's REST API
(``PATCH .../taskInstances/review/-1/hitlDetails``) of an in-process api app sharing the
test metadata database, signed in as a SimpleAuthManager user, while ``dag.test()`` runs.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from audit_lib.store import session_scope
from tests.fixtures_reports import add_model_version, add_subject, idia_result, make_case_findings, pdf_text
from tests.fixtures_web import add_web_users, make_client
from tests.smtp_server import smtp_server  # noqa: F401 - fixture
from tests.test_report_pdfa import assert_pdfa3b
from tests.tsa_server import TSAServer, make_pki, signing_env

pytest.importorskip("airflow", reason="apache-airflow is not installed")

APPROVER = ("rita", "release-password-1234")
OTHER = ("otto", "other-password-1234")
SUBJECT_NAME = "Ada Quillfeather"


@pytest.fixture(scope="module")
def airflow_api(airflow_home, tmp_path_factory):
    """Airflow's own API app (``airflow.api_fastapi``) on the test metadata database, with
    two SimpleAuthManager users; yields ``token(user) -> headers`` and the client."""
    import os

    from fastapi.testclient import TestClient

    passwords = tmp_path_factory.mktemp("airflow-auth") / "passwords.json"
    passwords.write_text(json.dumps(dict([APPROVER, OTHER])))
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{APPROVER[0]}:admin,{OTHER[0]}:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__API_AUTH__JWT_SECRET": "test-jwt-secret-" + "0" * 64}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.api_fastapi.app import create_app

    client = TestClient(create_app("all"))

    def headers(who: tuple[str, str]) -> dict[str, str]:
        r = client.post("/auth/token", json={"username": who[0], "password": who[1]})
        assert r.status_code in (200, 201), r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    yield client, headers
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Reviewer(threading.Thread):
    """Answers the first open review of `evidence_reports` through the REST API, as the
    person would in the UI's Required Actions; first tries with ``first_try`` (a user who
    is not an approver) when given, and records the status codes."""

    def __init__(self, api, choice: str, comment: str, first_try: tuple[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.client, self.headers = api
        self.choice, self.comment, self.first_try = choice, comment, first_try
        self.statuses: list[int] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                r = self.client.get("/api/v2/dags/evidence_reports/dagRuns/~/hitlDetails",
                                    headers=self.headers(APPROVER))
                open_ = [d for d in r.json().get("hitl_details", []) if not d["response_received"]]
                if open_:
                    ti = open_[0]["task_instance"]
                    url = (f"/api/v2/dags/evidence_reports/dagRuns/{ti['dag_run_id']}/taskInstances/"
                           f"{ti['task_id']}/{ti['map_index']}/hitlDetails")
                    body = {"chosen_options": [self.choice], "params_input": {"comment": self.comment}}
                    for who in ([self.first_try] if self.first_try else []) + [APPROVER]:
                        self.statuses.append(self.client.patch(url, json=body, headers=self.headers(who)).status_code)
                    return
                time.sleep(0.5)
            self.error = "no review appeared within 120 s"
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)


@pytest.fixture
def release_env(sqlite_db_url, monkeypatch, tmp_path, smtp_server):  # noqa: F811 - fixture
    """A subject with a positive finding, an Ed25519 signing key, recipients and the approver."""
    from audit_lib.config import get_settings

    monkeypatch.setenv("AUDIT_DATA_DIR", str(tmp_path))  # reports in tmp_path/reports, as make_client serves
    pki = make_pki(tmp_path / "pki")
    tsa = TSAServer(pki)
    for k, v in signing_env(pki, tsa.__enter__()).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AUDIT_NOTIFY_DPO", "dpo@example.org")
    monkeypatch.setenv("AUDIT_NOTIFY_LEGAL", "legal@example.org")
    get_settings.cache_clear()
    add_web_users(sqlite_db_url)
    with session_scope() as s:
        mv = add_model_version(s, "clip-release")
        subj = add_subject(s, name=SUBJECT_NAME)
        make_case_findings(s, "release_run", "privacy",
                           [(idia_result(SUBJECT_NAME), f"subject:{subj.id}", mv.id, subj.id)])
        sid, pseudonym = subj.id, subj.pseudonym
    yield {"sid": sid, "pseudonym": pseudonym, "mail": smtp_server,
           "reports": get_settings().data_dir / "reports"}
    tsa.__exit__(None, None, None)


def _run_review(airflow_dags, api, sid: int, choice: str, comment: str, first_try=None):  # noqa: ANN001, ANN202
    reviewer = Reviewer(api, choice, comment, first_try)
    reviewer.start()
    dr = airflow_dags["evidence_reports"].test(run_conf={"cases": [f"subject:{sid}"]})
    reviewer.join(timeout=10)
    assert reviewer.error is None, reviewer.error
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    return dr, states, reviewer


def test_approved_report_is_signed_recorded_offered_and_announced(airflow_dags, airflow_api, release_env,
                                                                  monkeypatch, tmp_path):
    from audit_lib.reports.release import verify_decisions
    from audit_lib.reports.pades import check_pdf_signature
    from audit_lib.reports.verify import verify_report
    from audit_lib.store.models import Report, ReportDecision

    monkeypatch.setenv("AUDIT_RELEASE_APPROVERS", APPROVER[0])
    dr, states, reviewer = _run_review(airflow_dags, airflow_api, release_env["sid"], "Approve",
                                       "checked against the case file", first_try=OTHER)
    assert str(dr.state) == "success", states
    assert states == {"cases_to_render": "success", "render": "success", "review": "success",
                      "decide": "success"}
    assert reviewer.statuses == [403, 200]  # only the release role may answer
    with session_scope() as s:
        report = s.scalar(select(Report))
        decision = s.scalar(select(ReportDecision))
        assert decision.report_id == report.id and decision.decision == "approved"
        assert decision.decided_by == APPROVER[0] and decision.comment == "checked against the case file"
        assert decision.dag_run == f"evidence_reports/{dr.run_id}"
        assert verify_decisions(s) == []
        draft, released = Path(report.path), Path(decision.released_path)
    assert released != draft and released.is_file() and draft.is_file()
    signed = check_pdf_signature(released.read_bytes())
    assert signed.present and signed.intact and signed.problems == [], signed.problems
    assert "PAdES B-T" in decision.signature  # timestamped by the local TSA
    assert not check_pdf_signature(draft.read_bytes()).present  # the draft is never signed
    last_page = pdf_text(released).split("\f")[-2 if pdf_text(released).endswith("\f") else -1]
    assert "Approved by" in pdf_text(released) and APPROVER[0] in last_page
    assert "checked against the case file" in last_page
    assert "Approved by" not in pdf_text(draft)
    with session_scope() as s:
        verified = verify_report(s, released)
    assert verified.problems == [] and any("as released by rita" in c for c in verified.checks), verified.problems
    assert_pdfa3b(released, report.case_id)  # the archival format survives the signature
    flipped = tmp_path / "flipped.pdf"
    raw = bytearray(released.read_bytes())
    raw[raw.index(b"\n") + 2] ^= 0x01  # the binary comment after %PDF-1.x: signed, and the file parses
    flipped.write_bytes(bytes(raw))
    with session_scope() as s:
        assert verify_report(s, flipped).problems, "a flipped byte in the released PDF must fail verify"

    web = make_client(tmp_path)
    web.sign_in()
    page = web.client.get(f"/subjects/{release_env['sid']}").text
    assert f'href="/reports/{report.id}"' in page
    r = web.client.get(f"/reports/{report.id}")
    assert r.status_code == 200 and r.content == released.read_bytes()

    mails = [m for m in release_env["mail"] if "report released" in m.subject]
    assert len(mails) == 1 and sorted(mails[0].rcpt_tos) == ["dpo@example.org", "legal@example.org"]
    assert report.case_id in mails[0].text and release_env["pseudonym"] in mails[0].text
    assert SUBJECT_NAME not in mails[0].text and SUBJECT_NAME not in mails[0].subject
    assert mails[0].attachments == [] and "<img" not in mails[0].text


def test_rejected_draft_is_kept_never_signed_never_offered(airflow_dags, airflow_api, release_env, tmp_path):
    from audit_lib.store.models import Report, ReportDecision

    dr, states, _ = _run_review(airflow_dags, airflow_api, release_env["sid"], "Reject", "wrong subject")
    assert str(dr.state) == "success" and states["decide"] == "success", states
    with session_scope() as s:
        report = s.scalar(select(Report))
        decision = s.scalar(select(ReportDecision))
        assert (decision.decision, decision.decided_by, decision.comment) == ("rejected", APPROVER[0], "wrong subject")
        assert decision.released_path is None and decision.signature is None
    folder = release_env["reports"]
    assert Path(report.path).is_file()  # the draft is kept
    assert sorted(p.name for p in folder.iterdir()) == [Path(report.path).name]  # nothing signed
    assert not [m for m in release_env["mail"] if "report released" in m.subject]

    web = make_client(tmp_path)
    web.sign_in()
    assert f'href="/reports/{report.id}"' not in web.client.get(f"/subjects/{release_env['sid']}").text
    assert web.client.get(f"/reports/{report.id}").status_code == 404


def test_decisions_are_final_and_insert_only(release_env, tmp_path):
    from datetime import datetime, timezone

    from sqlalchemy import update
    from sqlalchemy.exc import DBAPIError

    from audit_lib.reports import render_report
    from audit_lib.reports.case import ReportError
    from audit_lib.reports.release import Decision, reject_report, release_report
    from audit_lib.store.models import Report, ReportDecision

    who = Decision("rita", datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc), "no")
    with session_scope() as s:
        render_report(s, f"subject:{release_env['sid']}", tmp_path)
    with session_scope() as s:
        report = s.scalar(select(Report))
        first = reject_report(s, report, who)
        assert reject_report(s, report, who).id == first.id  # a retried task adds nothing
        with pytest.raises(ReportError, match="already rejected"):
            release_report(s, report, f"subject:{release_env['sid']}", who, tmp_path)
    with pytest.raises(DBAPIError, match="insert-only"):
        with session_scope() as s:
            s.execute(update(ReportDecision).values(decision="approved"))
    assert list(tmp_path.glob("*-released.pdf")) == [] and list(tmp_path.glob("*-approved.pdf")) == []
