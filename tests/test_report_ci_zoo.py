"""Evidence reports from real findings on the ci reference zoo.

The findings are made by the product's own task bodies and workflows
(tests/fixtures_reports.py): IDIA and EncoderMI for a member of the tiny CLIP in one privacy
run, a watermark check of a leaked copy of a watermarked owned encoder, and that encoder's
theft risk. On PostgreSQL each report kind is rendered once with ``encoder-audit report
render``, read back with pypdf and rasterised with pdftoppm; ``report verify`` passes on the
untouched store and fails, naming the row, once an evidence row of those runs is altered.
On SQLite the run summary goes through the same steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from audit_lib.cli import app
from audit_lib.evidence import chain_head, run_evidence
from audit_lib.reports.wording import fmt_p
from audit_lib.store import session_scope
from audit_lib.store.models import AuditRun, Finding, Report
from tests.fixtures_reports import (
    force_update_evidence,
    make_privacy_findings,
    page_pixels,
    pdf_text,
    zoo_store,
)

pytest.importorskip("pypdf", reason="pypdf is not installed")


def _cli(*args: str):  # noqa: ANN202 - click Result
    return CliRunner().invoke(app, list(args))


def _render(case: str, out: Path) -> Path:
    res = _cli("report", "render", "--case", case, "--out", str(out))
    assert res.exit_code == 0, res.output
    path = Path(res.output.strip().removeprefix("wrote "))
    assert path.is_file(), res.output
    return path


@pytest.fixture(scope="module")
def zoo_reports(zoo_cases, tmp_path_factory) -> dict[str, Path]:
    """The three report kinds rendered from the zoo findings with the CLI (PostgreSQL)."""
    out = tmp_path_factory.mktemp("zoo-reports")
    return {kind: _render(case, out) for kind, case in zoo_cases.cases.items()}


def _stored(url: str, pdf: Path) -> tuple[Report, list[Finding], dict[str, str]]:
    """The report's row, its findings and the current chain head of each run behind them."""
    with session_scope(url) as s:
        row = s.scalar(select(Report).where(Report.path == str(pdf.resolve())))
        findings = list(s.scalars(select(Finding).where(Finding.id.in_(row.finding_ids)).order_by(Finding.id)))
        heads = {}
        for f in findings:
            run = s.get(AuditRun, f.run_id)
            heads[run.run_key] = chain_head(s, run)
        s.expunge_all()
    return row, findings, heads


def _findings_of_runs(url: str, run_keys: list[str]) -> set[int]:
    with session_scope(url) as s:
        return set(s.scalars(select(Finding.id).join(AuditRun, Finding.run_id == AuditRun.id)
                             .where(AuditRun.run_key.in_(run_keys))))


def _check_pdf(pdf: Path, url: str, versions: list[str]) -> tuple[str, list[Finding]]:
    """What every report must show, checked against the store: the verdict in plain words,
    each finding's p-value as printed, the model versions and the chain heads; and page 1
    must be a real page. Returns the text and the report's findings."""
    row, findings, heads = _stored(url, pdf)
    text = pdf_text(pdf)
    flat = text.replace(" ", "")  # hashes wrap anywhere (word-break: break-all)
    # the headline counts the tests of the case's claim; a theft-risk estimate is about the
    # owned model's exposure and is left out
    tests = [f for f in findings if f.method != "theft" and f.decision in ("positive", "negative", "inconclusive")]
    n_pos = sum(f.decision == "positive" for f in tests)
    assert tests and n_pos, [(f.method, f.decision) for f in findings]
    assert f"Evidence found in {n_pos} of {len(tests)} test{'s' if len(tests) > 1 else ''}" in text
    for f in findings:
        p = fmt_p(f.p_value)
        assert f"probability <= {p}" in text, (f.method, p)  # the p-value in plain words
        if f.method == "theft":  # its verdict is the curve in one sentence
            budget = max(r["budget"] for r in f.details["curve"] if r["defence"] == "none")
            assert f"With {budget} queries and no output defence" in text
        else:
            words = {"positive": "Evidence found", "negative": "No evidence found"}[f.decision]
            assert f"{words}: p = {p} is" in text, (f.method, p)
    for version in versions:
        assert version in flat, version
    for run_key, head in heads.items():
        assert head in flat, run_key
    assert row.chain_head in flat  # the report's chain head as recorded when it was rendered
    px = page_pixels(pdf, 1)
    assert px.std() > 20 and 0.01 < (px < 128).mean() < 0.5  # ink on white: not blank, not black
    return text, findings


def test_zoo_findings_match_the_ground_truth(zoo_cases):
    """The findings behind the reports are the zoo's truth: the member is found by both
    privacy methods, the leaked copy carries the watermark."""
    with session_scope(zoo_cases.db_url) as s:
        found = {f.method: f for f in s.scalars(select(Finding))}
        assert set(found) == {"idia", "encoder_mi", "watermark", "theft"}
        for method in ("idia", "encoder_mi", "watermark"):
            f = found[method]
            assert f.decision == "positive" and f.p_value <= f.alpha, (method, f.p_value)
        assert found["idia"].details["published_decision"] == "member"
        assert found["watermark"].target_key == f"suspect:{zoo_cases.ownership.suspect_id}"
        assert found["theft"].target_key == f"model:{zoo_cases.ownership.owned_id}"
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == zoo_cases.privacy.run_key))
        assert run.status == "succeeded" and chain_head(s, run) == zoo_cases.privacy.chain_head
        assert len(run_evidence(s, run)) > 21 * 100  # every query of the run is on its chain


def test_subject_report(zoo_cases, zoo_reports):
    priv = zoo_cases.privacy
    text, findings = _check_pdf(zoo_reports["subject"], zoo_cases.db_url, list(priv.versions.values()))
    assert {f.method for f in findings} == {"idia", "encoder_mi"}
    assert all(f.subject_id == priv.subject_id for f in findings)
    assert f"{priv.subject_name} ({priv.pseudonym})" in text  # a live subject is named for the legal team
    assert "arXiv:2209.07341" in text and "arXiv:2108.11023" in text


def test_ownership_report(zoo_cases, zoo_reports):
    own = zoo_cases.ownership
    text, findings = _check_pdf(zoo_reports["ownership"], zoo_cases.db_url, [own.version])
    assert {f.id for f in findings} == _findings_of_runs(zoo_cases.db_url, own.runs)
    assert "Evidence found in 1 of 1 test" in text  # the watermark; the theft estimate is not a test of the suspect
    assert "leaked-encoder" in text and "arXiv:2208.03948" in text and "arXiv:2201.05889" in text


def test_run_report(zoo_cases, zoo_reports):
    priv = zoo_cases.privacy
    text, findings = _check_pdf(zoo_reports["run"], zoo_cases.db_url, list(priv.versions.values()))
    assert {f.id for f in findings} == _findings_of_runs(zoo_cases.db_url, [priv.run_key])
    assert priv.chain_head in text.replace(" ", "")  # as the run's summary task logged it
    assert priv.subject_name not in text and priv.pseudonym in text  # run summaries: pseudonyms only


def test_untampered_reports_verify(zoo_cases, zoo_reports):
    for kind, pdf in zoo_reports.items():
        res = _cli("report", "verify", str(pdf))
        assert res.exit_code == 0 and f"report {pdf} verified" in res.output, (kind, res.output)


def _tamper_one_row(url: str, run_key: str) -> tuple[int, int, str]:
    """Alter a query's response hash in the middle of a run's chain: (item id, seq, original)."""
    with session_scope(url) as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == run_key))
        items = [i for i in run_evidence(s, run) if i.kind != "finding"]
        item = items[len(items) // 2]
        original = item.response_sha256
        force_update_evidence(s, item.id, response_sha256="0" * 64)
        return item.id, item.seq, original


def _assert_fails_naming_row(pdf: Path, run_key: str, seq: int) -> None:
    res = _cli("report", "verify", str(pdf))
    assert res.exit_code == 1 and "did NOT verify" in res.output, res.output
    assert f"run {run_key}: the evidence chain in the store does not verify: row {seq} was altered" in res.output, \
        res.output


def test_tampered_evidence_row_fails_verification_naming_it(zoo_cases, zoo_reports):
    url = zoo_cases.db_url
    for run_key, kinds in ((zoo_cases.privacy.run_key, ("subject", "run")),
                           (zoo_cases.ownership.runs[0], ("ownership",))):
        item_id, seq, original = _tamper_one_row(url, run_key)
        try:
            for kind in kinds:
                _assert_fails_naming_row(zoo_reports[kind], run_key, seq)
        finally:  # put the row back for the module's other tests
            with session_scope(url) as s:
                force_update_evidence(s, item_id, response_sha256=original)


def test_run_report_on_sqlite(ci_zoo, sqlite_database_url, tmp_path):
    """SQLite: the privacy run's summary renders with what it must show, verifies, and
    stops verifying once one of the run's evidence rows is altered."""
    with zoo_store(sqlite_database_url, tmp_path / "var") as url:
        priv = make_privacy_findings(ci_zoo, url)
        pdf = _render(f"run:{priv.run_key}", tmp_path / "reports")
        text, findings = _check_pdf(pdf, url, list(priv.versions.values()))
        assert {f.method for f in findings} == {"idia", "encoder_mi"} and priv.chain_head in text.replace(" ", "")
        assert _cli("report", "verify", str(pdf)).exit_code == 0
        _, seq, _ = _tamper_one_row(url, priv.run_key)
        _assert_fails_naming_row(pdf, priv.run_key, seq)
