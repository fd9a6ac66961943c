"""Registration and erasure, on PostgreSQL and SQLite; every bad input leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from audit_lib import registry
from audit_lib.registry import RegistryError
from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel, DataSubject, ImageBlob, SubjectImage


def _counts(url: str) -> tuple[int, int, int, int]:
    with session_scope(url) as s:
        return tuple(s.scalar(select(func.count()).select_from(t))
                     for t in (DataSubject, SubjectImage, ImageBlob, AuditedModel))


def _add(url: str, photos: Path, **kw):
    with session_scope(url) as s:
        subj = registry.add_subject_from_folders(s, name="Ada Example", legal_basis="GDPR 6(1)(f)",
                                                 photos_dir=photos, **kw)
        return subj.id


def test_register_list_show(db_url, face_dir):
    sid = _add(db_url, face_dir, aliases=["A. Example"])
    with session_scope(db_url) as s:
        subj = registry.get_subject(s, sid)
        assert subj.name == "Ada Example" and subj.aliases == ["A. Example"]
        assert len(subj.images) == 3 and all(len(i.sha256) == 64 for i in subj.images)
        assert [x.id for x in registry.list_subjects(s)] == [sid]


def test_identical_bytes_stored_once_across_subjects(db_url, face_dir):
    _add(db_url, face_dir)
    _add(db_url, face_dir)
    assert _counts(db_url)[:3] == (2, 6, 3)


def _bad_folder(tmp_path: Path, face_dir: Path, kind: str) -> Path:
    out = tmp_path / f"bad-{kind}"
    out.mkdir()
    good = (face_dir / "1.pgm").read_bytes()
    (out / "ok.pgm").write_bytes(good)
    if kind == "not_image":
        (out / "notes.jpg").write_bytes(b"these are not pixels, just text named .jpg\n" * 10)
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.open(face_dir / "2.pgm").convert("RGB").save(buf, "JPEG", quality=90)
        (out / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "bomb":
        Image.new("L", (8000, 8000)).save(out / "bomb.png", optimize=True)
    elif kind == "too_small":
        Image.new("RGB", (16, 16), "white").save(out / "tiny.png")
    elif kind == "duplicate":
        (out / "copy.pgm").write_bytes(good)
    return out


BAD = {
    "not_image": "not an image",
    "truncated": "truncated or corrupt",
    "bomb": "decompression bomb",
    "too_small": "too small",
    "duplicate": "duplicate image",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_image_refused_and_nothing_written(db_url, face_dir, tmp_path, kind):
    folder = _bad_folder(tmp_path, face_dir, kind)
    with pytest.raises(RegistryError, match=BAD[kind]) as err:
        _add(db_url, folder)
    if kind != "duplicate":
        assert "ok.pgm" not in str(err.value)  # names the bad file, not a good one
    assert _counts(db_url) == (0, 0, 0, 0)


def test_empty_folder_refused(db_url, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no image files"):
        _add(db_url, tmp_path / "empty")
    assert _counts(db_url) == (0, 0, 0, 0)


def test_same_image_as_photo_and_claimed_refused(db_url, face_dir):
    with pytest.raises(RegistryError, match="duplicate image for this subject"):
        _add(db_url, face_dir, claimed_dir=face_dir)
    assert _counts(db_url) == (0, 0, 0, 0)


def test_erasure_removes_personal_data_keeps_hashes(db_url, face_dir, tmp_path):
    sid = _add(db_url, face_dir, aliases=["Ada E."])
    other = tmp_path / "other"
    other.mkdir()
    (other / "1.pgm").write_bytes((face_dir / "1.pgm").read_bytes())  # shared with a live subject
    _add(db_url, other)
    with session_scope(db_url) as s:
        registry.erase_subject(s, sid)
    with session_scope(db_url) as s:
        subj = registry.get_subject(s, sid)
        assert subj.is_erased and subj.name is None and subj.aliases is None
        assert subj.legal_basis is None and subj.pseudonym.startswith("subject-")
        assert subj.images == []  # the erased subject's links always go (audit_lib/erasure.py)
        shared = hashlib.sha256((face_dir / "1.pgm").read_bytes()).hexdigest()
        blobs = {b.sha256: b.data is not None for b in s.scalars(select(ImageBlob))}
        assert blobs == {shared: True}  # only the image another live subject registered stays
        with pytest.raises(RegistryError, match="can never be audited again"):
            registry.subject_image_bytes(s, subj, "reference")
        with pytest.raises(RegistryError, match="already erased"):
            registry.erase_subject(s, sid)


def test_models_add_checkpoint_and_api(db_url, tiny_clip_weights):
    arch, weights = tiny_clip_weights  # registration loads the weights into the architecture
    with session_scope(db_url) as s:
        registry.add_model(s, name="tiny", kind="checkpoint", role="owned", capabilities="image,text",
                           architecture=arch, weights_path=weights)
        registry.add_model(s, name="api", kind="api", role="suspect", capabilities=["image"],
                           endpoint_url="http://127.0.0.1:9/embed", credential_name="AUDIT_CRED_API")
    with session_scope(db_url) as s:
        models = registry.list_models(s)
        assert [(m.name, m.capabilities) for m in models] == [("tiny", ["image", "text"]), ("api", ["image"])]


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="checkpoint", architecture="tiny-clip", weights_path=Path("/nonexistent.safetensors")),
     "no such file"),
    (dict(kind="api", endpoint_url="ftp://example.invalid/embed"), "not an http"),
    (dict(kind="api", endpoint_url="file:///etc/passwd"), "not an http"),
    (dict(kind="api", endpoint_url="http://127.0.0.1:9/", capabilities="image,smell"), "unknown smell"),
])
def test_bad_model_refused(db_url, kwargs, message):
    kwargs.setdefault("capabilities", "image")
    with pytest.raises(RegistryError, match=message):
        with session_scope(db_url) as s:
            registry.add_model(s, name="m", role="suspect", **kwargs)
    assert _counts(db_url)[3] == 0


def test_over_long_name_refused_before_the_database(db_url, face_dir):
    with pytest.raises(RegistryError, match="name: 201 characters is over the limit of 200"):
        with session_scope(db_url) as s:
            registry.add_subject_from_folders(s, name="x" * 201, legal_basis="consent", photos_dir=face_dir)
    assert _counts(db_url) == (0, 0, 0, 0)


def test_truncated_image_refused_even_if_a_library_allows_truncated_loads(monkeypatch, face_dir):
    from PIL import ImageFile

    from audit_lib.images import ImageError, check_image_bytes

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    buf = io.BytesIO()
    Image.open(face_dir / "1.pgm").convert("RGB").save(buf, "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        check_image_bytes(buf.getvalue()[: len(buf.getvalue()) // 2], "cut.jpg",
                          min_side=8, max_pixels=10**8, max_bytes=10**8)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
