"""E-mail notifications through Airflow's SmtpNotifier, received by a real SMTP server on
127.0.0.1 (tests/smtp_server.py): new positive findings and failed audit tasks. The
release e-mail is checked end to end in tests/test_report_release.py."""

from __future__ import annotations

import pytest

from audit_lib.config import get_settings
from audit_lib.store import session_scope
from tests.smtp_server import smtp_server  # noqa: F401 - fixture

SUBJECT_NAME = "Ada Quillfeather"


@pytest.fixture
def recipients(monkeypatch):
    monkeypatch.setenv("AUDIT_NOTIFY_DPO", "dpo@example.org, legal@example.org")
    monkeypatch.setenv("AUDIT_NOTIFY_LEGAL", "legal@example.org")
    monkeypatch.setenv("AUDIT_NOTIFY_OPERATORS", "ops@example.org")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_new_finding_mail_names_the_case_and_pseudonym_only(sqlite_db_url, recipients, smtp_server,  # noqa: F811
                                                            face_dir):
    from audit_lib import registry
    from audit_lib.images import check_image_folder
    from audit_lib.notifications import notify_new_findings
    from audit_lib.registry import ImageLimits

    with session_scope() as s:
        subj = registry.add_subject(s, name=SUBJECT_NAME, legal_basis="GDPR 6(1)(f)", aliases=["A. Q."],
                                    photos=check_image_folder(face_dir, **ImageLimits.from_settings().as_kwargs()))
        sid, pseudonym = subj.id, subj.pseudonym
    assert notify_new_findings("privacy_audit/manual__1", [f"subject:{sid}", "ownership:3:7"])
    assert len(smtp_server) == 1
    mail = smtp_server[0]
    assert sorted(mail.rcpt_tos) == ["dpo@example.org", "legal@example.org"]  # each address once
    assert f"subject:{sid}" in mail.text and pseudonym in mail.text and "ownership:3:7" in mail.text
    assert "privacy_audit/manual__1" in mail.text
    for leak in (SUBJECT_NAME, "Quillfeather", "A. Q."):
        assert leak not in mail.text and leak not in mail.subject
    assert mail.attachments == [] and "<img" not in mail.text and "data:image" not in mail.text


def test_no_recipients_sends_nothing(sqlite_db_url, smtp_server, monkeypatch):  # noqa: F811
    from audit_lib.notifications import notify_new_findings

    for var in ("AUDIT_NOTIFY_DPO", "AUDIT_NOTIFY_LEGAL"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    assert notify_new_findings("privacy_audit/manual__2", ["ownership:1:2"]) is False
    assert smtp_server == []


def test_audit_dags_tell_the_operator_when_a_task_fails(airflow_dags, sqlite_db_url, recipients,
                                                         smtp_server):  # noqa: F811
    from audit_lib.notifications import notify_audit_failure

    for dag_id in ("privacy_audit", "ownership_audit"):
        for t in airflow_dags[dag_id].tasks:
            cb = t.on_failure_callback
            assert cb is notify_audit_failure or notify_audit_failure in (cb or []), (dag_id, t.task_id)
    dr = airflow_dags["privacy_audit"].test(run_conf={"subject_ids": [424242]})
    assert str(dr.state) == "failed"
    mails = [m for m in smtp_server if "audit task failed" in m.subject]
    assert len(mails) == 1, [m.subject for m in smtp_server]
    assert mails[0].rcpt_tos == ["ops@example.org"]
    assert "privacy_audit.registry_snapshot" in mails[0].subject and dr.run_id in mails[0].text
    assert "424242" in mails[0].text  # the error names the unknown id, nothing personal
