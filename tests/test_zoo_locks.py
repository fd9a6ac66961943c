"""The zoo cache's per-entry locks: parallel builds (two test workers, a test session and the
demo) split the entries between them and never train one entry twice."""

from __future__ import annotations

import fcntl

import pytest

torch = pytest.importorskip("torch")

from audit_lib.zoo.build import _build_or_load, cache_lock  # noqa: E402

META = {"name": "e", "role": "independent", "architecture": "test", "capabilities": ["image"], "seed": 0,
        "recipe": {}, "splits": {}}


def _trainer(calls: list[int]):  # noqa: ANN202
    def train():  # noqa: ANN202
        calls.append(1)
        return torch.nn.Linear(2, 2), {"metrics": {"m": 1.0}, "train": {"steps": 1}}
    return train


def test_an_entry_locked_elsewhere_is_skipped_then_trained_once(tmp_path):
    calls: list[int] = []
    with open(tmp_path / ".e.lock", "w") as other:  # another process training entry "e"
        fcntl.flock(other, fcntl.LOCK_EX)
        assert _build_or_load(tmp_path, "e", "ab" * 32, _trainer(calls), META, wait=False) is None
        assert calls == []
        fcntl.flock(other, fcntl.LOCK_UN)
    first = _build_or_load(tmp_path, "e", "ab" * 32, _trainer(calls), META, wait=False)
    again = _build_or_load(tmp_path, "e", "ab" * 32, _trainer(calls), META, wait=True)
    assert calls == [1] and first is not None and not first.cached
    assert again is not None and again.cached and again.sha256 == first.sha256


def test_the_manifest_lock_does_not_block_entry_locks(tmp_path):
    with cache_lock(tmp_path) as held, cache_lock(tmp_path, "e", wait=False) as entry:
        assert held and entry
    with cache_lock(tmp_path, "e") as a, cache_lock(tmp_path, "e", wait=False) as b:
        assert a and not b
