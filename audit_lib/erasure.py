"""Erasure of a data subject (GDPR Art. 17): the name, aliases and photos leave every place
the product writes them, and what must stay is recorded with the reason.

- The subject row keeps its pseudonym only; the subject's image links are deleted, and an
  image's bytes go unless another subject or a model's reference images still use them.
- The query cache loses the answers for the subject's photos (when no one else uses them)
  and for the prompts that contain their name or aliases.
- Reports that concern the subject are withdrawn: the files are deleted and a tombstone
  records which report, when and why. A report under a legal hold
  (:mod:`audit_lib.store.holds`) is kept, and the erasure record says so.
- Findings and the evidence chain hold hashes and pseudonyms only (identity inference
  writes no names into findings), so they stay, as the chain requires.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from audit_lib.store.holds import held_records
from audit_lib.store.models import (DataSubject, ErasureRecord, Finding, ImageBlob, ModelReferenceImage,
                                    Report, SubjectImage, utcnow)
from audit_lib.store.tombstones import withdraw_report, withdrawn_report_ids

log = logging.getLogger(__name__)


def _name_prompt_hashes(name: str | None, aliases: list[str] | None) -> list[str]:
    """sha256 of every prompt identity inference sends with the subject's names."""
    from audit_lib.methods.identity_inference import TEMPLATES, prompt_texts

    names = [n.strip() for n in [name or "", *(aliases or [])] if n and n.strip()]
    return [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in prompt_texts(list(dict.fromkeys(names)),
                                                                                TEMPLATES)]


def _view_hashes(images: list[bytes]) -> list[str]:
    """sha256 of the augmented views membership inference embeds of these photos (the
    default recipe and count; views made with other parameters are not recomputed)."""
    from audit_lib.methods.views import make_views
    from audit_lib.pipelines.privacy import DEFAULT_PARAMS

    n = int(DEFAULT_PARAMS["n_views"])
    out = []
    for data in images:
        try:
            out.extend(hashlib.sha256(v).hexdigest() for v in make_views(data, n))
        except Exception:  # noqa: BLE001 - an image that cannot be re-viewed has no views cached
            log.warning("erasure: could not recompute the views of one photo")
    return out


def remove_image_links(session: Session, links: list[SubjectImage]) -> tuple[int, int, int]:
    """Delete these subject-image links; an image's bytes (and its cached answers, and
    those of its augmented views) go too unless another subject or a model still registers
    it. Returns (images deleted, images kept as shared, cache rows deleted)."""
    from audit_lib.encoders.cache import delete_cached_inputs

    gone, gone_bytes, shared = [], [], 0
    for im in links:
        others = session.scalar(select(func.count()).select_from(SubjectImage).where(
            SubjectImage.sha256 == im.sha256, SubjectImage.id.not_in([x.id for x in links])))
        ref = session.scalar(select(func.count()).select_from(ModelReferenceImage).where(
            ModelReferenceImage.sha256 == im.sha256))
        if others or ref or im.sha256 in gone:
            shared += 0 if im.sha256 in gone else 1
            continue
        gone.append(im.sha256)
        if im.blob is not None and im.blob.data:
            gone_bytes.append(im.blob.data)
    owners = {im.subject for im in links}
    for im in links:
        session.delete(im)
    session.flush()
    for owner in owners:
        session.expire(owner, ["images"])
    for sha in gone:
        session.execute(delete(ImageBlob).where(ImageBlob.sha256 == sha))
    rows = delete_cached_inputs(session, gone, ["image"])
    rows += delete_cached_inputs(session, _view_hashes(gone_bytes), ["view"])
    return len(gone), shared, rows


def _subject_reports(session: Session, subject_id: int) -> list[Report]:
    finding_ids = set(session.scalars(select(Finding.id).where(
        (Finding.subject_id == subject_id) | (Finding.target_key == f"subject:{subject_id}"))))
    return [r for r in session.scalars(select(Report).order_by(Report.id))
            if r.case_id == f"subject:{subject_id}" or set(r.finding_ids or []) & finding_ids]


def _checkpoint_after_commit(session: Session) -> None:
    """Once the erasure commits, fold SQLite's write-ahead log into the (secure-delete)
    database file, so the removed content survives in neither file."""
    from sqlalchemy import event

    from audit_lib.store.db import checkpoint_sqlite

    bind = session.get_bind()
    if bind.dialect.name != "sqlite":
        return
    url = bind.url.render_as_string(hide_password=False)
    event.listen(session, "after_commit", lambda _s: checkpoint_sqlite(url), once=True)


def erase_subject(session: Session, subject_id: int) -> ErasureRecord:
    """Erase one subject in the caller's transaction; returns the erasure record (counts of
    what went, and what was kept and why)."""
    from audit_lib.encoders.cache import delete_cached_inputs
    from audit_lib.registry import RegistryError, get_subject

    subject: DataSubject = get_subject(session, subject_id)
    if subject.is_erased:
        raise RegistryError(f"subject {subject_id}: already erased")
    kept: list[dict[str, str]] = []
    held = held_records(session)
    prompts = _name_prompt_hashes(subject.name, subject.aliases)

    links = list(subject.images)
    gone, shared, cache_rows = remove_image_links(session, links)
    if shared:
        kept.append({"what": f"{shared} photo(s)",
                     "why": "the same image is registered for another subject or a model; only this "
                            "subject's link to it was removed"})
    cache_rows += delete_cached_inputs(session, prompts, ["text"])

    withdrawn = withdrawn_report_ids(session)
    n_withdrawn = 0
    for report in _subject_reports(session, subject.id):
        if report.id in held.reports:
            kept.append({"what": f"report {report.id} ({report.case_id})",
                         "why": f"legal hold on case {held.reports[report.id]}"})
        elif report.id not in withdrawn:
            withdraw_report(session, report, f"erasure of {subject.pseudonym}")
            n_withdrawn += 1
    own = set(session.scalars(select(Finding.id).where(
        (Finding.subject_id == subject.id) | (Finding.target_key == f"subject:{subject.id}"))))
    held_findings = sorted(own & set(held.findings))
    if held_findings:
        kept.append({"what": f"{len(held_findings)} finding(s) and their runs' evidence",
                     "why": "legal hold on case " + ", ".join(sorted({held.findings[f] for f in held_findings}))})

    subject.name = None
    subject.aliases = None
    subject.legal_basis = None
    subject.sex = None
    subject.erased_at = utcnow()
    record = ErasureRecord(subject_id=subject.id, pseudonym=subject.pseudonym, kept=kept, removed={
        "photos_deleted": gone, "photo_links_removed": len(links),
        "cache_answers_deleted": cache_rows, "reports_withdrawn": n_withdrawn})
    session.add(record)
    session.flush()
    _checkpoint_after_commit(session)
    log.info("erased %s: %s; kept %d item(s)", subject.pseudonym, record.removed, len(kept))
    return record
