"""IDIA's decoy prompts as a per-model-version text set: a second subject's audit
on the same model version sends no decoy query and reads no decoy row, the run records the
whole set as one evidence item that the store expands again, and the finding equals what
an uncached run gives; cached repeats are recorded once per run when the handle is asked
to skip them. A real (random-weight) open_clip model behind the real store."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
from sqlalchemy import delete, select

from audit_lib.encoders import cache as cache_mod
from audit_lib.encoders.cache import (SET_KIND, StoreBackedHandle, clear_text_set_memo, member_set_sha256,
                                      read_text_set, response_sha256)
from audit_lib.evidence import run_evidence, start_run, verify_chain
from audit_lib.methods.identity_inference import TEMPLATES, build_candidates, prompt_texts, run_idia
from audit_lib.store import session_scope
from audit_lib.store.models import QueryCacheEntry

DECOYS = [f"Decoy{i} Person{i}" for i in range(100)]
N_CANDIDATES = 40
N_DECOY_PROMPTS = len(TEMPLATES) * (N_CANDIDATES - 1)


@pytest.fixture
def clip_model(db_url, tiny_clip_weights) -> int:
    from audit_lib import registry

    clear_text_set_memo()
    arch, path = tiny_clip_weights
    with session_scope(db_url) as s:
        return registry.add_model(s, name="tiny-clip", kind="checkpoint", role="suspect",
                                  capabilities="image,text", architecture=arch, weights_path=path).id


def _open(db_url: str, model_id: int, run_key: str) -> StoreBackedHandle:
    from audit_lib import registry
    from audit_lib.encoders import open_handle

    with session_scope(db_url) as s:
        model = registry.get_model(s, model_id)
    return open_handle(model, run_key=run_key, db_url=db_url)


def _kinds(db_url: str, run_key: str) -> Counter:
    with session_scope(db_url) as s:
        return Counter(i.kind for i in run_evidence(s, start_run(s, run_key, "privacy")))


class _LookupCount:
    """Counts the inputs the handle looks up in the query cache, by kind."""

    def __init__(self, monkeypatch) -> None:
        self.by_kind: Counter = Counter()
        original = StoreBackedHandle._lookup

        def counted(handle, hashes, kind):
            self.by_kind[kind] += len(hashes)
            return original(handle, hashes, kind)

        monkeypatch.setattr(StoreBackedHandle, "_lookup", counted)


def test_second_subject_reuses_the_decoy_set_and_records_it_once(db_url, clip_model, tiny_clip_weights,
                                                                  png_images, monkeypatch):
    from audit_lib.encoders.local import LocalEncoder

    lookups = _LookupCount(monkeypatch)
    h1 = _open(db_url, clip_model, "idia-set-1")
    run_idia(h1, png_images[:3], "Ann Lee", decoys=DECOYS, n_candidates=N_CANDIDATES)
    assert h1.misses == len(TEMPLATES) * N_CANDIDATES + 3 and h1.hits == 0
    assert lookups.by_kind["text"] == len(TEMPLATES) * N_CANDIDATES  # own prompts + the set, once
    first = _kinds(db_url, "idia-set-1")
    # the first audit paid for every decoy prompt: each is an ordinary query, plus the set item
    assert first == {"text": len(TEMPLATES) * N_CANDIDATES, SET_KIND: 1, "image": 3}

    lookups.by_kind.clear()
    h2 = _open(db_url, clip_model, "idia-set-2")
    found = run_idia(h2, png_images[3:6], "Bo Kim", decoys=DECOYS, n_candidates=N_CANDIDATES)
    # no decoy prompt reached the model or the query cache: only the subject's own prompts
    assert h2.misses == len(TEMPLATES) + 3 and h2.hits == N_DECOY_PROMPTS
    assert lookups.by_kind == {"text": len(TEMPLATES), "image": 3}
    assert _kinds(db_url, "idia-set-2") == {"text": len(TEMPLATES), SET_KIND: 1, "image": 3}

    # the finding is the one an uncached run gives (the model itself, no store, no memo)
    plain = LocalEncoder.from_checkpoint(*tiny_clip_weights)
    expected = run_idia(plain, png_images[3:6], "Bo Kim", decoys=DECOYS, n_candidates=N_CANDIDATES)
    assert found.p_value == expected.p_value and found.statistic == expected.statistic
    assert found.details == expected.details and found.parameters == expected.parameters

    # the one evidence item commits to every decoy prompt and answer, and the store expands it
    cands = build_candidates("Bo Kim", decoys=DECOYS, n_candidates=N_CANDIDATES)
    decoy_texts = prompt_texts(cands.names[1:])
    prompt_hashes = [hashlib.sha256(t.encode()).hexdigest() for t in decoy_texts]
    answers = [response_sha256(v) for v in plain.encode_texts(decoy_texts)]
    with session_scope(db_url) as s:
        run = start_run(s, "idia-set-2", "privacy")
        item = next(i for i in run_evidence(s, run) if i.kind == SET_KIND)
        assert item.cached and item.model_version_id == h2.model_version_id
        assert item.input_sha256 == found.parameters["decoy_prompts_sha256"] == member_set_sha256(prompt_hashes)
        assert item.response_sha256 == member_set_sha256(answers)
        members = read_text_set(s, h2.model_version, item.input_sha256)
        assert members == list(zip(prompt_hashes, answers))
        assert verify_chain(s, run).ok


def test_two_audits_that_start_together_send_the_decoy_set_once(db_url, clip_model, png_images):
    """Two chunks of one model version on two workers reach the decoy set before either has
    cached it (the model takes half a second over the set, long enough for the other to
    look it up meanwhile). The set's store lock makes them take turns: the model receives
    the set's prompts once in all, the second audit reads them from the query cache, and
    both runs record the same set item over a verifying chain."""
    import threading
    import time

    handles = [_open(db_url, clip_model, f"idia-together-{i}") for i in (1, 2)]
    received: list[int] = []  # the texts the model received, per call, from either handle
    for h in {id(h.inner): h for h in handles}.values():  # the handles may share one model
        def counted(texts, encode=h.inner.encode_texts):  # noqa: ANN001, ANN202
            received.append(len(texts))
            if len(texts) > len(TEMPLATES):
                time.sleep(0.5)
            return encode(texts)

        h.inner.encode_texts = counted
    start = threading.Barrier(2, timeout=30)
    found: dict[int, object] = {}
    errors: list[BaseException] = []

    def audit(i: int, name: str) -> None:
        try:
            start.wait()
            found[i] = run_idia(handles[i], png_images[3 * i:3 * i + 3], name, decoys=DECOYS,
                                n_candidates=N_CANDIDATES)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=audit, args=(i, name)) for i, name in enumerate(("Ann Lee", "Bo Kim"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(received) == [len(TEMPLATES), len(TEMPLATES), N_DECOY_PROMPTS]  # own prompts, the set once
    assert sum(h.misses for h in handles) == N_DECOY_PROMPTS + 2 * (len(TEMPLATES) + 3)
    assert sum(h.hits for h in handles) == N_DECOY_PROMPTS
    set_sha = found[0].parameters["decoy_prompts_sha256"]
    assert found[1].parameters["decoy_prompts_sha256"] == set_sha
    with session_scope(db_url) as s:
        items = []
        for i in (1, 2):
            run = start_run(s, f"idia-together-{i}", "privacy")
            assert verify_chain(s, run).ok
            (item,) = [e for e in run_evidence(s, run) if e.kind == SET_KIND]
            items.append(item)
        assert {(e.input_sha256, e.response_sha256) for e in items} == {(set_sha, items[0].response_sha256)}
        assert sorted(e.cached for e in items) == [False, True]  # one paid for it, one read the cache
        assert len(read_text_set(s, handles[0].model_version, set_sha)) == N_DECOY_PROMPTS


def test_a_store_without_the_set_is_never_answered_from_memory(db_url, clip_model, png_images):
    h1 = _open(db_url, clip_model, "idia-memo-1")
    f1 = run_idia(h1, png_images[:3], "Ann Lee", decoys=DECOYS, n_candidates=N_CANDIDATES)
    set_sha = f1.parameters["decoy_prompts_sha256"]
    with session_scope(db_url) as s:  # the set's manifest row is gone (another store, a purge)
        s.execute(delete(QueryCacheEntry).where(QueryCacheEntry.kind == SET_KIND))
    h2 = _open(db_url, clip_model, "idia-memo-2")
    f2 = run_idia(h2, png_images[:3], "Ann Lee", decoys=DECOYS, n_candidates=N_CANDIDATES)
    assert h2.misses == 0 and f2.details == f1.details  # members come from the query cache again
    with session_scope(db_url) as s:
        assert len(read_text_set(s, h2.model_version, set_sha)) == N_DECOY_PROMPTS
        rows = s.scalars(select(QueryCacheEntry).where(QueryCacheEntry.kind == SET_KIND)).all()
        assert len(rows) == 1
        # a member no longer in the query cache: the set no longer expands
        member, _ = read_text_set(s, h2.model_version, set_sha)[7]
        s.execute(delete(QueryCacheEntry).where(QueryCacheEntry.kind == "text",
                                                QueryCacheEntry.input_sha256 == member))
        with pytest.raises(ValueError, match="missing from the query cache"):
            read_text_set(s, h2.model_version, set_sha)
        with pytest.raises(ValueError, match="no manifest row"):
            read_text_set(s, h2.model_version, "0" * 64)


def test_cached_repeats_are_recorded_once_per_run_when_asked(db_url, clip_model, png_images):
    h = _open(db_url, clip_model, "repeats-1")
    h.skip_recorded_repeats = True
    h.encode_images(png_images[:4])
    h.encode_images(png_images[2:6] + png_images[4:6])  # 2 recorded hits, 2 new, 2 repeats of new
    assert h.misses == 6 and h.hits == 4
    h_again = _open(db_url, clip_model, "repeats-1")  # another task of the same run
    h_again.skip_recorded_repeats = True
    h_again.encode_images(png_images[:6])
    assert h_again.hits == 6
    assert _kinds(db_url, "repeats-1") == {"image": 6}
    # another run records its own rows; without the flag every repeat is recorded as before
    h_other = _open(db_url, clip_model, "repeats-2")
    h_other.skip_recorded_repeats = True
    h_other.encode_images(png_images[:3] + png_images[:3])
    plain = _open(db_url, clip_model, "repeats-3")
    plain.encode_images(png_images[:3] + png_images[:3])
    assert _kinds(db_url, "repeats-2") == {"image": 3} and _kinds(db_url, "repeats-3") == {"image": 6}
    with session_scope(db_url) as s:
        for key in ("repeats-1", "repeats-2", "repeats-3"):
            items = run_evidence(s, start_run(s, key, "privacy"))
            assert verify_chain(s, start_run(s, key, "privacy")).ok
            assert len({(i.input_sha256, i.response_sha256) for i in items}) == (6 if key == "repeats-1" else 3)


def test_remembered_rows_are_checked_against_the_store(db_url, clip_model, png_images):
    """A run whose rows this process remembers but the store no longer holds (the store was
    re-created under the same URL) is recorded again, not skipped."""
    from audit_lib.store.models import AuditRun, EvidenceItem

    h = _open(db_url, clip_model, "repeats-gone")
    h.skip_recorded_repeats = True
    h.encode_images(png_images[:3])
    assert len(cache_mod._RECORDED) >= 1
    with session_scope(db_url) as s:  # the store re-created: an owner's wipe past the triggers
        from tests.fixtures_reports import bypass_append_only

        run = start_run(s, "repeats-gone", "privacy")
        with bypass_append_only(s):
            s.execute(delete(EvidenceItem).where(EvidenceItem.run_id == run.id))
        s.execute(delete(AuditRun).where(AuditRun.id == run.id))
    h2 = _open(db_url, clip_model, "repeats-gone")
    h2.skip_recorded_repeats = True
    out = h2.encode_images(png_images[:3])
    assert h2.hits == 3 and out.shape[0] == 3
    assert _kinds(db_url, "repeats-gone") == {"image": 3}
    with session_scope(db_url) as s:
        assert verify_chain(s, start_run(s, "repeats-gone", "privacy")).ok


def test_member_set_digest_is_order_sensitive_and_documented():
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    assert member_set_sha256([a, b]) == hashlib.sha256(f"{a}\n{b}".encode()).hexdigest()
    assert member_set_sha256([a, b]) != member_set_sha256([b, a])
    assert np.unique([member_set_sha256([a]), member_set_sha256([a, a])]).size == 2


def test_report_of_an_idia_run_verifies_and_its_set_expands_from_the_store(db_url, clip_model, png_images,
                                                                           tmp_path):
    """What an expert gets: the report verifies against the store, and the ``text-set`` row
    in its evidence manifest expands (through the manifest's model version) into the
    per-prompt hashes, which are the prompts the finding's parameters name."""
    import json

    from pypdf import PdfReader

    from audit_lib.evidence import store_finding
    from audit_lib.reports import render_report, verify_report
    from audit_lib.reports.manifest import ATTACHMENT_NAME

    h0 = _open(db_url, clip_model, "idia-report-0")  # an earlier audit paid for the decoys
    run_idia(h0, png_images[:3], "Ann Lee", decoys=DECOYS, n_candidates=N_CANDIDATES)
    h = _open(db_url, clip_model, "idia-report")
    found = run_idia(h, png_images[3:6], "Bo Kim", decoys=DECOYS, n_candidates=N_CANDIDATES)
    with session_scope(db_url) as s:
        store_finding(s, start_run(s, "idia-report", "privacy"), found, target_key="subject:bo",
                      model_version_id=h.model_version_id)
    with session_scope(db_url) as s:
        path = render_report(s, "run:idia-report", tmp_path)
    with session_scope(db_url) as s:
        result = verify_report(s, path)
    assert result.ok, result.problems
    manifest = json.loads(PdfReader(path).attachments[ATTACHMENT_NAME][0])
    (run,) = manifest["runs"]
    assert Counter(i["kind"] for i in run["items"]) == {"text": len(TEMPLATES), SET_KIND: 1, "image": 3,
                                                         "finding": 1}
    item = next(i for i in run["items"] if i["kind"] == SET_KIND)
    version = next(v["version"] for v in manifest["model_versions"] if v["id"] == item["model_version_id"])
    (finding,) = manifest["findings"]
    assert item["input_sha256"] == finding["parameters"]["decoy_prompts_sha256"]
    cands = build_candidates("Bo Kim", decoys=DECOYS, n_candidates=N_CANDIDATES)
    with session_scope(db_url) as s:
        members = read_text_set(s, version, item["input_sha256"])
    assert [m for m, _ in members] == [hashlib.sha256(t.encode()).hexdigest()
                                       for t in prompt_texts(cands.names[1:])]
    assert member_set_sha256([r for _, r in members]) == item["response_sha256"]


def test_text_hashes_are_each_texts_sha256_and_remembered_per_list():
    from audit_lib.encoders.cache import text_hashes

    clear_text_set_memo()
    texts = ["a photo of Ann Lee", "actor Bo Kim", "é"]
    first = text_hashes(texts)
    assert first == tuple(hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts)
    assert text_hashes(list(texts)) is first  # remembered
    # the key tells lists apart that concatenate alike
    assert text_hashes(["ab", "c"]) != text_hashes(["a", "bc"])
