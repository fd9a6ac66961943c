"""Erasure that erases: after ``subjects erase`` the subject's name, aliases and photos are
nowhere in the evidence store (every table, every column, and on SQLite the database and
WAL files' bytes), the data folder or the reports (PDF text and decompressed streams);
a photo shared with another subject survives for them; a report under a legal hold is
kept and the erasure record says why.

A tiny CLIP-style model with seeded random weights is the audited model; the photos are
real ORL faces from ../shared/data.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

from audit_lib.cli import app
from tests.conftest import FACES, copy_photos

runner = CliRunner()
NAME, ALIASES = "Ana Ferreira", ["Anita Ferreira-Souza", "A. F. Souza"]



@pytest.fixture
def audited(db_url, tiny_clip_weights, tmp_path):
    """Two subjects sharing one photo, an identity-inference audit of the first, and its
    report (photos included) in the data folder's reports."""
    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")
    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.reports import render_report
    from audit_lib.store import session_scope

    ana = [FACES / "s1" / f"{i}.pgm" for i in (1, 2, 3)]
    other = [FACES / "s1" / "3.pgm", FACES / "s5" / "1.pgm", FACES / "s5" / "2.pgm"]  # s1/3 is shared
    with session_scope() as s:
        registry.add_model(s, name="clip", kind="checkpoint", role="suspect", capabilities="image,text",
                           architecture=tiny_clip_weights[0], weights_path=tiny_clip_weights[1])
        sid = registry.add_subject_from_folders(s, name=NAME, aliases=ALIASES, legal_basis="GDPR 6(1)(f), test",
                                                photos_dir=copy_photos(tmp_path / "ana", ana), sex="f").id
        oid = registry.add_subject_from_folders(s, name="Bruno Keller", legal_basis="test", sex="m",
                                                photos_dir=copy_photos(tmp_path / "bruno", other)).id
    res = runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", "clip",
                              "--n-candidates", "30", "--run-key", "erasure-idia", "--json"])
    assert res.exit_code == 0, res.output
    reports = get_settings().data_dir / "reports"
    with session_scope() as s:
        pdf = render_report(s, f"subject:{sid}", reports, include_photos=True)
    return {"subject": sid, "other": oid, "pdf": pdf, "data_dir": get_settings().data_dir,
            "only_ana": [p.read_bytes() for p in ana[:2]], "shared": ana[2].read_bytes()}


def _cell_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode()
    return str(value).encode()


def _store_bytes(url: str) -> list[tuple[str, bytes]]:
    """Every cell of every table (reflected, so tables added later are walked too), and
    on SQLite the database and WAL files as they lie on disk."""
    from audit_lib.store.db import get_engine

    engine = get_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    out = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for col, value in row._mapping.items():
                    out.append((f"{table.name}.{col}", _cell_bytes(value)))
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        for f in (db, Path(f"{db}-wal")):
            if f.exists():
                out.append((f.name, f.read_bytes()))
    return out


def _pdf_views(path: Path) -> list[bytes]:
    """A PDF's raw bytes, its extracted text and every decompressed stream."""
    from pypdf import PdfReader

    raw = path.read_bytes()
    views = [raw]
    reader = PdfReader(str(path))
    views.append("\n".join(p.extract_text() or "" for p in reader.pages).encode())
    numbers = {n for gen in reader.xref.values() for n in gen} | set(reader.xref_objStm)
    for obj_num in sorted(numbers):
        try:
            obj = reader.get_object(obj_num)
        except Exception:  # noqa: BLE001 - a free object number
            continue
        if hasattr(obj, "get_data"):
            try:
                views.append(obj.get_data())
            except Exception:  # noqa: BLE001 - an image filter pypdf does not decode
                views.append(zlib.decompress(obj._data) if obj.get("/Filter") == "/FlateDecode" else b"")
    return views


def _folder_bytes(root: Path) -> list[tuple[str, bytes]]:
    out = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.suffix.lower() == ".pdf":
            out.extend((str(f), v) for v in _pdf_views(f))
        else:
            out.append((str(f), f.read_bytes()))
    return out


def _needles(ctx: dict) -> dict[str, bytes]:
    words = {w: w.encode() for w in [NAME, *ALIASES]}
    words.update({f"photo {i}": b for i, b in enumerate(ctx["only_ana"])})
    return words


def _hits(places: list[tuple[str, bytes]], needles: dict[str, bytes]) -> list[str]:
    return sorted({f"{what} in {where}" for where, blob in places for what, n in needles.items() if n in blob})


def test_erasure_leaves_no_name_alias_or_photo_anywhere(audited, db_url):
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.store.models import ErasureRecord, QueryCacheEntry, ReportWithdrawal, SubjectImage

    needles = _needles(audited)
    before = _hits(_store_bytes(db_url) + _folder_bytes(audited["data_dir"]), needles)
    assert any(NAME in h and "data_subjects" in h for h in before), before  # the walk can see
    assert any(NAME in h and h.endswith(".pdf") for h in before), before
    assert not any("findings." in h for h in before), before  # IDIA writes no names into findings
    with session_scope() as s:
        n_image_cache = len(list(s.scalars(select(QueryCacheEntry).where(QueryCacheEntry.kind == "image"))))
    assert n_image_cache == 3

    res = runner.invoke(app, ["subjects", "erase", str(audited["subject"]), "--yes"])
    assert res.exit_code == 0, res.output

    after = _hits(_store_bytes(db_url) + _folder_bytes(audited["data_dir"]), needles)
    assert after == []
    assert not audited["pdf"].exists()
    with session_scope() as s:
        other = registry.get_subject(s, audited["other"])
        shared = dict(registry.subject_image_bytes(s, other, "reference"))
        assert audited["shared"] in shared.values() and len(shared) == 3  # survives for Bruno
        assert not list(s.scalars(select(SubjectImage).where(SubjectImage.subject_id == audited["subject"])))
        cached = list(s.scalars(select(QueryCacheEntry.input_sha256).where(QueryCacheEntry.kind == "image")))
        assert len(cached) == 1  # only the shared photo's answer stays
        record = s.scalar(select(ErasureRecord))
        assert record.removed["photos_deleted"] == 2 and record.removed["reports_withdrawn"] == 1
        assert record.removed["cache_answers_deleted"] >= 2 + 4 * 3  # 2 photos, 4 phrasings x 3 names
        assert [k["what"] for k in record.kept] == ["1 photo(s)"]
        tomb = s.scalar(select(ReportWithdrawal))
        assert tomb is not None and NAME not in tomb.reason


def test_a_report_under_legal_hold_is_kept_and_the_record_says_why(audited, db_url):
    from audit_lib.store import session_scope
    from audit_lib.store.models import ErasureRecord, ReportWithdrawal

    case = f"subject:{audited['subject']}"
    res = runner.invoke(app, ["hold", "set", case, "--reason", "matter 2026-17"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["subjects", "erase", str(audited["subject"]), "--yes"])
    assert res.exit_code == 0, res.output
    assert audited["pdf"].exists()  # kept under the hold
    places = _store_bytes(db_url)
    assert _hits(places, _needles(audited)) == []  # the store itself still holds no name or photo
    with session_scope() as s:
        record = s.scalar(select(ErasureRecord))
        whys = [k["why"] for k in record.kept]
        assert any(w == f"legal hold on case {case}" for w in whys), record.kept
        assert any("finding(s)" in k["what"] for k in record.kept), record.kept
        assert s.scalar(select(ReportWithdrawal)) is None


def test_personal_files_are_private(audited, db_url):
    """The reports folder and its PDFs, and the SQLite store, are owner-only (0700/0600)."""
    reports = audited["pdf"].parent
    assert oct(reports.stat().st_mode & 0o777) == "0o700"
    assert oct(audited["pdf"].stat().st_mode & 0o777) == "0o600"
    if db_url.startswith("sqlite:///"):
        db = Path(db_url.removeprefix("sqlite:///"))
        assert oct(db.stat().st_mode & 0o777) == "0o600", db
