"""The reference zoo for tests: ``ci_zoo`` builds the ``ci`` profile once per machine.

It is cached in ``AUDIT_ZOO_CACHE`` (default ``var/zoo-cache`` in the checkout), outside the
per-test ``AUDIT_DATA_DIR``, so later sessions reuse it (a few seconds to check hashes).
The first build takes minutes on 2 CPU cores; concurrent sessions wait on a file lock.

What the manifest gives (``audit_lib.zoo.manifest.ZooManifest``):

- ``ci_zoo.entry("tiny-clip")``: open_clip image-text model; ``.people`` lists the 40 ORL
  identities with ``name``, ``sex``, ``member`` (named in captions), ``caption_mode`` and
  ``heldout_photos`` (never trained on: use these as a subject's photos).
- ``ci_zoo.entry("simclr-target")`` / ``"simclr-shadow"``: SimCLR encoders overfitted on
  ``splits["members"]`` (indices into the CIFAR-10 subset's ``x_train``), with
  ``splits["nonmembers"]`` kept apart.
- ``ci_zoo.by_role("independent")``: the null population for ownership checks.
- ``ci_zoo.downstream``: labelled split of ``x_test`` (``train`` / ``test`` indices).

Load any entry with ``LocalEncoder.from_checkpoint(entry.architecture, entry.weights_path)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audit_lib.config import PROJECT_ROOT

ZOO_CACHE = Path(os.environ.get("AUDIT_ZOO_CACHE", PROJECT_ROOT / "var" / "zoo-cache"))


@pytest.fixture(scope="session")
def ci_zoo():
    """The ci profile's manifest (built on the CPU and cached; not registered anywhere)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from audit_lib.zoo.build import build_zoo

    return build_zoo("ci", device="cpu", register=False, cache_root=ZOO_CACHE, progress=False)
