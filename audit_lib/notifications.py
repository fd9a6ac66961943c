"""E-mail notifications through Airflow's notifier mechanism (``SmtpNotifier`` of the SMTP
provider, with the Airflow Connection named by ``AUDIT_SMTP_CONN_ID``).

Three messages: a new positive finding (to the DPO and legal), a released report (to the
DPO and legal), and a failed audit task (to the operators, as the audit DAGs'
``on_failure_callback``, which Airflow calls once the task's retries are spent).

Data minimisation (GDPR Art. 5(1)(c)): a message names a case by its id and a subject by
pseudonym only, never by name, alias or photo, and carries no attachment; the recipient
opens the DPO web app to see more.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One notification: subject line and HTML body (already escaped)."""

    subject: str
    html: str


def addresses(*fields: str) -> list[str]:
    """The de-duplicated addresses of comma-separated settings fields, in order."""
    out: list[str] = []
    for field in fields:
        for a in (field or "").split(","):
            if (a := a.strip()) and a not in out:
                out.append(a)
    return out


def case_recipients() -> list[str]:
    """Who hears of findings and releases: ``AUDIT_NOTIFY_DPO`` and ``AUDIT_NOTIFY_LEGAL``."""
    from audit_lib.config import get_settings

    s = get_settings()
    return addresses(s.notify_dpo, s.notify_legal)


def case_label(session: Any, case: str) -> str:
    """A case as a message may name it: ``subject:ID`` gets the subject's pseudonym, never
    the name; other cases (ownership, run) carry no personal data and stay as they are."""
    from audit_lib.store.models import DataSubject

    kind, _, rest = case.partition(":")
    if kind == "subject" and rest.isdigit():
        subject = session.get(DataSubject, int(rest))
        if subject is not None:
            return f"{case} (pseudonym {subject.pseudonym})"
    return case


def _page(lines: Sequence[str]) -> str:
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def finding_message(run_key: str, labels: Sequence[str]) -> Message:
    """New positive findings of one audit run, by case."""
    lines = [f"The audit run {run_key} produced new positive findings in {len(labels)} case(s):",
             *[f"- {label}" for label in labels],
             "Evidence reports are being drafted; each waits for approval before release.",
             "Details are in the DPO web app (no personal data is sent by e-mail)."]
    return Message(f"[encoder-audit] new positive finding: {', '.join(labels)[:150]}", _page(lines))


def release_message(case_id: str, label: str, decided_by: str, decided_at: str) -> Message:
    """A report released after approval."""
    lines = [f"Evidence report {case_id} for case {label} was approved by {decided_by} at "
             f"{decided_at} and released (signed).",
             "Download it from the DPO web app (no personal data is sent by e-mail)."]
    return Message(f"[encoder-audit] report released: {case_id}", _page(lines))


def failure_message(dag_id: str, task_id: str, run_id: str, tries: int | None, error: str) -> Message:
    """An audit task that failed after its retries (error text shortened, no personal data
    is put into task errors by the pipelines: they name ids only)."""
    lines = [f"Task {dag_id}.{task_id} of run {run_id} failed"
             + (f" after {tries} tries." if tries else "."),
             f"Error: {error[:500]}", "See the task log in the Airflow UI."]
    return Message(f"[encoder-audit] audit task failed: {dag_id}.{task_id}", _page(lines))


def send(message: Message, to: Iterable[str], context: Mapping[str, Any] | None = None) -> bool:
    """Send ``message`` with Airflow's ``SmtpNotifier``; False (logged) when nobody is
    configured to receive it. SMTP errors propagate to the caller."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from audit_lib.config import get_settings

    recipients = list(to)
    if not recipients:
        log.info("no recipients configured for %r: not sent", message.subject)
        return False
    s = get_settings()
    notifier = SmtpNotifier(to=recipients, from_email=s.notify_from, subject=message.subject,
                            html_content=message.html, smtp_conn_id=s.smtp_conn_id)
    notifier.notify(dict(context or {}))
    log.info("sent %r to %d recipient(s)", message.subject, len(recipients))
    return True


def send_quietly(message: Message, to: Iterable[str]) -> bool:
    """:func:`send`, logging an SMTP failure instead of raising: used where the work the
    message reports on (a report request, a release) must not be undone by a mail outage."""
    try:
        return send(message, to)
    except Exception:  # noqa: BLE001 - logged with its traceback; the caller's work stands
        log.exception("notification %r could not be sent", message.subject)
        return False


def notify_new_findings(run_key: str, cases: Sequence[str], *, db_url: str | None = None) -> bool:
    """Tell the DPO and legal of new positive cases found by ``run_key`` (pseudonyms only)."""
    from audit_lib.store import session_scope

    if not cases:
        return False
    with session_scope(db_url) as session:
        labels = [case_label(session, c) for c in cases]
    return send_quietly(finding_message(run_key, labels), case_recipients())


def notify_audit_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the audit DAGs: tell the operators (``AUDIT_NOTIFY_OPERATORS``)
    that a task failed after its retries. Never raises: a callback error would hide the
    task's own failure."""
    from audit_lib.config import get_settings

    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", "?")
    message = failure_message(dag_id, getattr(ti, "task_id", "?"),
                              str(getattr(ti, "run_id", context.get("run_id", "?"))),
                              getattr(ti, "try_number", None), str(context.get("exception") or "unknown"))
    send_quietly(message, addresses(get_settings().notify_operators))
