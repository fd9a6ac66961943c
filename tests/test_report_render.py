"""PDF evidence reports: each case kind renders, reads as text, and looks like a page."""

from __future__ import annotations

import json
import re

import pytest
from pypdf import PdfReader
from sqlalchemy import select

from audit_lib.registry import erase_subject
from audit_lib.reports import ReportError, render_report, verify_report
from audit_lib.reports.wording import fmt_p
from audit_lib.store import session_scope
from audit_lib.store.models import Finding, Report
from tests.fixtures_reports import idia_result, make_case_findings, page_pixels, pdf_text


def _findings(url, ids):
    with session_scope(url) as s:
        return {f.id: (f.method, f.p_value, f.decision) for f in
                s.scalars(select(Finding).where(Finding.id.in_(ids)))}


@pytest.mark.parametrize("kind", ["subject", "ownership", "run"])
def test_each_report_kind_renders_with_verdict_p_version_and_chain_head(report_world, db_url, tmp_path, kind):
    w = report_world
    case, stored, versions = {
        "subject": (f"subject:{w['subject_id']}", [w["privacy"]], ["clip", "simclr"]),
        "ownership": (f"ownership:{w['owned_id']}:{w['suspect_id']}", [w["ownership"]], ["suspect", "owned"]),
        "run": (f"run:{w['privacy'].run_key}", [w["privacy"]], ["clip", "simclr"]),
    }[kind]
    with session_scope(db_url) as s:
        path = render_report(s, case, tmp_path)
    reader = PdfReader(str(path))
    pages = [page.extract_text() for page in reader.pages]
    text = re.sub(r"\s+", " ", " ".join(pages))
    ids = [i for c in stored for i in c.finding_ids]
    findings = _findings(db_url, ids)

    assert "Evidence found in 2 of 2 tests" in text  # the verdict in plain words
    assert "under h0 (" in text.lower() and "has probability <=" in text
    assert "proof" not in text.replace("No finding here is proof", "").lower()  # never claims proof
    for method, p, decision in findings.values():
        if p is not None:
            assert f"p = {fmt_p(p)}" in text, (method, fmt_p(p))
    for key in versions:
        assert w["versions"][key] in text  # full model version (weights sha256)
    with session_scope(db_url) as s:
        row = s.scalar(select(Report).where(Report.kind == kind))
        assert row.chain_head in text.replace(" ", "")
        assert sorted(row.finding_ids) == sorted(ids)
    # references of the methods shown, case id on every page, page numbers
    for i, t in enumerate(pages, start=1):
        assert path.stem in t and f"Page {i} of {len(pages)}" in t
    # machine-readable findings attached
    payload = json.loads(reader.attachments["evidence.json"][0])
    assert {f["id"] for f in payload["findings"]} == set(ids)
    if kind == "subject":
        assert "arXiv:2209.07341" in text and "arXiv:2108.11023" in text  # the published methods
        assert "a photo of a person named {}" in text  # the per-template IDIA table
        assert "Ada Quillfeather" in text  # a live subject is named for the legal team
        assert "Reference photos" not in text and not payload["photos_included"]  # privacy by default
    if kind == "ownership":
        assert "arXiv:2208.03948" in text and "arXiv:2201.07391" in text and "arXiv:2201.05889" in text
    if kind == "run":
        assert "Quillfeather" not in text and w["pseudonym"] in text  # run summaries: pseudonyms only
    for section in ("Scope and methods", "Results", "Evidence manifest", "Reproducibility", "Glossary"):
        assert section in text
    # page 1 is a real page, not blank
    px = page_pixels(path, 1)
    assert px.std() > 20 and (px < 128).mean() > 0.01
    with session_scope(db_url) as s:
        result = verify_report(s, path)
    assert result.ok, result.problems


def test_erased_subject_appears_by_pseudonym_only(report_world, db_url, tmp_path):
    w = report_world
    with session_scope(db_url) as s:
        erase_subject(s, w["subject_id"])
    with session_scope(db_url) as s:
        path = render_report(s, f"subject:{w['subject_id']}", tmp_path, include_photos=True)
    text = pdf_text(path)
    raw = PdfReader(str(path)).attachments["evidence.json"][0].decode()
    assert w["pseudonym"] in text
    for part in ("Ada", "Quillfeather"):
        assert part not in text and part not in raw
    assert "[withheld]" in text and "erased" in text
    with session_scope(db_url) as s:
        assert verify_report(s, path).ok  # redacted findings still verify against the store


def test_photos_only_for_an_entitled_recipient(db_url, face_dir, tmp_path):
    from audit_lib.images import check_image_folder
    from audit_lib.registry import ImageLimits, add_subject
    from tests.fixtures_reports import add_model_version

    with session_scope(db_url) as s:
        mv = add_model_version(s, "clip-photos")
        subj = add_subject(s, name="Cy Photo", legal_basis="GDPR 6(1)(c)",
                           photos=check_image_folder(face_dir, **ImageLimits.from_settings().as_kwargs()))
        make_case_findings(s, "photo_run", "privacy", [(idia_result("Cy Photo"), f"subject:{subj.id}", mv.id, subj.id)])
        sid = subj.id
    with session_scope(db_url) as s:
        plain = render_report(s, f"subject:{sid}", tmp_path / "plain")
        entitled = render_report(s, f"subject:{sid}", tmp_path / "entitled", include_photos=True,
                                 case_id="EA-photos-test")
    counts = {}
    for path, expected in ((plain, False), (entitled, True)):
        reader = PdfReader(str(path))
        counts[expected] = len({img.name for page in reader.pages for img in page.images})
        assert ("Reference photos" in pdf_text(path)) is expected
        assert json.loads(reader.attachments["evidence.json"][0])["photos_included"] is expected
    assert counts[True] - counts[False] == 3  # the three photos, and only when asked for


def test_refusals_name_the_problem(db_url, tmp_path):
    with session_scope(db_url) as s:
        for case, msg in [("subject:x", "expected subject:ID"), ("subject:99", "no such subject"),
                          ("run:nope", "no such audit run"), ("ownership:1", "expected")]:
            with pytest.raises(ReportError, match=msg):
                render_report(s, case, tmp_path)
    assert not list(tmp_path.glob("*.pdf"))


def test_missing_optional_details_still_render(db_url, tmp_path):
    from tests.fixtures_reports import add_model_version, add_subject

    with session_scope(db_url) as s:
        mv = add_model_version(s, "bare-model")
        subj = add_subject(s, "Bo Example")
        r = idia_result("Bo Example")
        r.details = {"observed": r.statistic}  # a method that reports almost nothing
        make_case_findings(s, "bare_run", "privacy", [(r, f"subject:{subj.id}", mv.id, subj.id)])
        sid = subj.id
    with session_scope(db_url) as s:
        path = render_report(s, f"subject:{sid}", tmp_path)
    assert "Identity inference" in pdf_text(path)


def test_a_case_id_is_never_reused_and_no_file_is_overwritten(db_url, tmp_path):
    from typer.testing import CliRunner

    from audit_lib.cli import app
    from tests.fixtures_reports import add_model_version, watermark_result

    with session_scope(db_url) as s:
        mv = add_model_version(s, "suspect-reuse")
        make_case_findings(s, "reuse_run", "ownership", [(watermark_result(), f"suspect:{mv.model_id}", mv.id, None)],
                           n_queries=2)
    runner = CliRunner()
    render = ["report", "render", "--case", "run:reuse_run", "--out", str(tmp_path), "--case-id", "EA-fixed-1"]
    first = runner.invoke(app, render)
    assert first.exit_code == 0, first.output
    pdf = tmp_path / "EA-fixed-1.pdf"
    before = pdf.read_bytes()
    with session_scope(db_url) as s:
        row = s.scalar(select(Report).where(Report.case_id == "EA-fixed-1"))
        row_before = (row.id, row.sha256, row.path)
    again = runner.invoke(app, render)  # a second report under the same id: refused, one line
    assert again.exit_code == 2, again.output
    assert "already used by another report" in again.output and "Traceback" not in again.output
    assert pdf.read_bytes() == before
    with session_scope(db_url) as s:
        rows = s.scalars(select(Report).where(Report.case_id == "EA-fixed-1")).all()
        assert [(r.id, r.sha256, r.path) for r in rows] == [row_before]
    # a file already in the way (not a report of the store) is not overwritten either
    squatter = tmp_path / "EA-fixed-2.pdf"
    squatter.write_bytes(b"not ours")
    third = runner.invoke(app, render[:-1] + ["EA-fixed-2"])
    assert third.exit_code == 2 and "never overwritten" in third.output, third.output
    assert squatter.read_bytes() == b"not ours"
    with session_scope(db_url) as s:
        assert s.scalar(select(Report).where(Report.case_id == "EA-fixed-2")) is None
    # two generated ids in the same second differ
    with session_scope(db_url) as s:
        from datetime import datetime, timezone

        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        a = render_report(s, "run:reuse_run", tmp_path, now=when)
        b = render_report(s, "run:reuse_run", tmp_path, now=when)
    assert a != b and a.exists() and b.exists() and b.stem == a.stem + "-2"
