"""Reports are archival PDF/A-3b documents with the evidence embedded as an associated file.

No PDF/A validator installs here (veraPDF is a Java program that PyPI, apt and npm do not
carry), so these tests check with pikepdf what a validator would check first: the PDF/A
identification in the XMP metadata, the case id in the XMP, every font embedded (the
signature stamp's too), the output intent with its ICC profile, the associated file with
relationship ``Data``, and no encryption. They do not check ISO 19005-3 clause by clause
(colour spaces of every image, transparency, XMP extension schemas).
"""

from __future__ import annotations

import json
from pathlib import Path

import pikepdf
import pytest

from audit_lib.reports import render_report
from audit_lib.store import session_scope
from tests.fixtures_reports import add_model_version, make_case_findings, watermark_result

RUN = "ownership_audit__pdfa"


@pytest.fixture
def sqlite_store(sqlite_db_url):
    """The SQLite evidence store, emptied (PDF/A does not depend on the backend)."""
    return sqlite_db_url


def render_one(url: str, out: Path, run_key: str = RUN) -> Path:
    """One ownership finding in one run, rendered."""
    with session_scope(url) as s:
        mv = add_model_version(s, f"suspect-{run_key}")
        make_case_findings(s, run_key, "ownership", [(watermark_result(), f"suspect:{mv.model_id}", mv.id, None)],
                           n_queries=3)
    with session_scope(url) as s:
        return render_report(s, f"run:{run_key}", out)


def _fonts(pdf: pikepdf.Pdf):
    """Every font dictionary reachable from the pages, their form XObjects and annotations."""
    seen, out = set(), []

    def walk(resources) -> None:  # noqa: ANN001
        if resources is None:
            return
        for font in (resources.get("/Font") or {}).values():
            if font.objgen not in seen:
                seen.add(font.objgen)
                out.append(font)
        for xobj in (resources.get("/XObject") or {}).values():
            if xobj.get("/Subtype") == "/Form" and xobj.objgen not in seen:
                seen.add(xobj.objgen)
                walk(xobj.get("/Resources"))

    for page in pdf.pages:
        walk(page.obj.get("/Resources"))
        for annot in page.obj.get("/Annots") or []:
            ap = annot.get("/AP")
            if ap is not None and "/N" in ap:
                walk(ap.N.get("/Resources"))
    return out


def assert_pdfa3b(path: Path, case_id: str) -> None:
    """The PDF/A-3b checks named in the module docstring."""
    with pikepdf.open(path) as pdf:
        assert not pdf.is_encrypted
        meta = pdf.open_metadata()
        assert meta.get("pdfaid:part") == "3" and meta.get("pdfaid:conformance") == "B"
        assert case_id in str(meta.get("pdf:Keywords")) and case_id in str(meta.get("dc:description"))
        intents = pdf.Root.OutputIntents
        assert any(i.S == "/GTS_PDFA1" and "/DestOutputProfile" in i for i in intents)
        fonts = _fonts(pdf)
        assert fonts
        for font in fonts:
            if font.Subtype == "/Type3":
                continue  # glyphs are content streams: nothing to embed
            desc = font.DescendantFonts[0].FontDescriptor if font.Subtype == "/Type0" else font.FontDescriptor
            assert any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3")), font.get("/BaseFont")
        af = [f for f in pdf.Root.AF if str(f.get("/UF", f.get("/F"))) == "evidence.json"]
        assert len({f.objgen for f in af}) == 1 and af[0].AFRelationship == "/Data"  # one file (listed twice)
        payload = af[0].EF.F.read_bytes()
        assert json.loads(payload)["case_id"] == case_id
        assert "/ID" in pdf.trailer


def test_report_is_pdfa3b_with_case_id_fonts_intent_and_evidence(sqlite_store, tmp_path):
    path = render_one(sqlite_store, tmp_path)
    assert_pdfa3b(path, path.stem)
    assert path.stat().st_mode & 0o077 == 0  # a report is readable by its owner only
