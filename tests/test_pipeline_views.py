"""EncoderMI's views on the pipeline's fast path: golden view bytes (any change of the view
encoding changes the evidence and misses the query cache, so it must be a deliberate,
versioned change), views that carry their pixels, and the reference-view memo."""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from audit_lib.imaging import png_bytes
from audit_lib.methods import views
from audit_lib.methods.views import VIEWS_VERSION, View, clear_view_memo, make_views

# sha256 of (the image's PNG, the concatenated sha256 digests of its 10 views' bytes, the
# concatenated decoded pixels of the views, the first view's bytes), measured with views-v1
# before views carried their pixels (Pillow 11, zlib: PNG compress_level 6, no optimize).
GOLDEN = {
    (32, 32): ("ff212e1a35ed2c3d425ebe2fdb40b6574df3457f0fd06580a36db9cfe4720753",
               "cb92482eac52a58d3a5fb5c5f81b02898ffddd6dbf6c9b10b7e26b55879938c5",
               "e7688cdf1f6201f9b449e8ea93db3619a9bca335d4714d1c034b267681a8b443",
               "203a39f89fc7c950478abef091888234ddcf428752cb8820d80098806b782a2e"),
    (48, 40): ("6b51d5e1c4605a61c2ec6606f07147273c143a2b962dd29333c0fe6b8e39b726",
               "97dafe6cb48702851ed53051bb681195f6efa10c5fa4e464dc1e883e82681289",
               "db60d575d82a18661c2eefd81050ce7b1af388144b288bf1f87e03a76f9c3f5b",
               "f85600c71b3b98d89812b61fd45aefff874ab2ce66a718f559b927129e7b1438"),
}


def fixed_image(h: int, w: int, shift: int = 0) -> bytes:
    """A deterministic RGB test image made by arithmetic alone (no resampling), as PNG."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(7 * x + 3 * y + shift) % 256, (x * y) % 256, (255 - 5 * x + 11 * y) % 256], axis=-1)
    return png_bytes(arr.astype(np.uint8))


def _decoded(view: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes(view))).convert("RGB"))


@pytest.mark.parametrize("size", sorted(GOLDEN))
def test_view_bytes_are_pinned_for_a_fixed_image(size):
    image = fixed_image(*size)
    want_image, want_views, want_pixels, want_first = GOLDEN[size]
    assert VIEWS_VERSION == "views-v1"  # a new encoding needs a new version and new goldens
    assert hashlib.sha256(image).hexdigest() == want_image
    out = make_views(image, 10)
    assert hashlib.sha256(b"".join(hashlib.sha256(v).digest() for v in out)).hexdigest() == want_views
    assert hashlib.sha256(b"".join(_decoded(v).tobytes() for v in out)).hexdigest() == want_pixels
    assert hashlib.sha256(out[0]).hexdigest() == want_first
    assert make_views(image, 10, memo=True) == out  # the memo gives the same bytes


def test_views_carry_exactly_the_pixels_their_bytes_encode():
    for v in make_views(fixed_image(48, 40), 10):
        assert isinstance(v, View) and isinstance(v, bytes)
        assert v.pixels.mode == "RGB"
        assert np.array_equal(np.asarray(v.pixels), _decoded(v))
        plain = pickle.loads(pickle.dumps(v))
        assert type(plain) is bytes and plain == v


def test_reference_view_memo_makes_each_image_once_and_is_bounded(monkeypatch):
    clear_view_memo()
    made = []
    real = views._make_views
    monkeypatch.setattr(views, "_make_views", lambda img, n, recipe: made.append(img) or real(img, n, recipe))
    a, b = fixed_image(32, 32), fixed_image(48, 40)
    first = make_views(a, 10, memo=True)
    again = make_views(a, 10, memo=True)
    assert again == first and len(made) == 1
    again.pop()  # callers get their own list
    assert len(make_views(a, 10, memo=True)) == 10 and len(made) == 1
    make_views(a, 10)  # without the memo: made again, not kept
    make_views(a, 6, memo=True)  # another view count is another entry
    assert len(made) == 3
    images = [a, *(fixed_image(32, 32, shift) for shift in range(30, 240, 30))]  # 8 alike images
    sizes = [sum(len(v) + len(v.pixels.tobytes()) for v in make_views(im, 10)) for im in images]
    assert 8 * min(sizes) > 4 * max(sizes) + 4
    monkeypatch.setattr(views, "MEMO_BYTES", 4 * max(sizes) + 4)  # each fits; not all 8 together
    clear_view_memo()
    made.clear()
    for im in images:
        make_views(im, 10, memo=True)
        assert views._memo_bytes <= views.MEMO_BYTES
    assert made == images
    make_views(images[-1], 10, memo=True)  # the most recent: kept
    assert len(made) == 8
    make_views(a, 10, memo=True)  # the oldest was pushed out: made again
    assert made == [*images, a]
    monkeypatch.setattr(views, "MEMO_BYTES", 4 * max(sizes) - 1)  # one image's views over a quarter
    clear_view_memo()
    make_views(b, 10, memo=True)
    assert not views._MEMO  # too big to keep
    clear_view_memo()
    assert not views._MEMO and views._memo_bytes == 0


def test_erasing_cached_answers_clears_the_view_memo(db_url):
    from audit_lib.encoders.cache import delete_cached_inputs
    from audit_lib.store import session_scope

    make_views(fixed_image(32, 32), 10, memo=True)
    assert views._MEMO
    with session_scope(db_url) as s:
        delete_cached_inputs(s, ["0" * 64], ["view"])
    assert not views._MEMO


def test_views_embed_as_their_decoded_bytes_and_record_the_same_evidence(db_url, small_cnn_weights,
                                                                        tiny_clip_weights, png_images):
    """The handle embeds a view's pixels instead of decoding its PNG: the same embeddings
    (small CNN: the project's transform; tiny CLIP: open_clip's own), the same query-cache
    rows and evidence hashes as for the plain bytes, and a second run answered from the cache."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.encoders import local_encoder, open_handle
    from audit_lib.store import session_scope
    from audit_lib.store.models import EvidenceItem, QueryCacheEntry

    vs = [v for img in png_images[:2] for v in make_views(img, 4)]
    plain = [bytes(v) for v in vs]
    for arch, path in (small_cnn_weights, tiny_clip_weights):
        enc = local_encoder(arch, path)
        assert np.array_equal(enc.encode_images(vs), enc.encode_images(plain))
    arch, path = small_cnn_weights
    with session_scope(db_url) as s:
        model = registry.add_model(s, name="cnn", kind="checkpoint", role="suspect", capabilities="image",
                                   architecture=arch, weights_path=path)
        s.expunge(model)
    first = open_handle(model, run_key="views-a", db_url=db_url)
    emb = first.encode_images(vs, kind="view")
    assert (first.misses, first.hits) == (len(vs), 0)
    second = open_handle(model, run_key="views-b", db_url=db_url)
    assert np.array_equal(second.encode_images(plain, kind="view"), emb)
    assert (second.misses, second.hits) == (0, len(vs))
    with session_scope(db_url) as s:
        cached = set(s.execute(select(QueryCacheEntry.input_sha256, QueryCacheEntry.response_sha256)
                               .where(QueryCacheEntry.kind == "view")).all())
        rows = s.execute(select(EvidenceItem.input_sha256, EvidenceItem.response_sha256, EvidenceItem.cached)
                         .where(EvidenceItem.kind == "view").order_by(EvidenceItem.run_id, EvidenceItem.seq)).all()
    assert cached == {(hashlib.sha256(p).hexdigest(), r) for p, (_, r, _) in zip(plain, rows)}
    assert [r[:2] for r in rows[:len(vs)]] == [r[:2] for r in rows[len(vs):]]
    assert [r[2] for r in rows] == [False] * len(vs) + [True] * len(vs)
