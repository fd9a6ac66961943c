"""Where the pipelines find trained things that are expensive to rebuild: the reference
zoo and the owners' enrolment caches (watermark training, suspect zoo, fingerprint training).

All three are keyed by config hashes inside (a change to code, data or settings retrains),
so the demo, the tests and the DAG tasks share them: ``AUDIT_ZOO_CACHE`` (default
``var/zoo-cache``, as the tests' ``ci_zoo`` fixture), ``var/ownership-cache`` (as the
watermark tests) and ``var/fingerprint`` (as the fingerprint tests), overridable with
``AUDIT_OWNERSHIP_CACHE`` and ``AUDIT_FINGERPRINT_CACHE``.
"""

from __future__ import annotations

import os
from pathlib import Path

from audit_lib.config import PROJECT_ROOT


def zoo_cache_root() -> Path:
    """The reference zoo's cache root (profiles are folders inside it)."""
    return Path(os.environ.get("AUDIT_ZOO_CACHE", PROJECT_ROOT / "var" / "zoo-cache"))


def ownership_cache() -> Path:
    """The watermark enrolment cache (``audit_lib.ownership.watermark.enrol_cached``)."""
    return Path(os.environ.get("AUDIT_OWNERSHIP_CACHE", PROJECT_ROOT / "var" / "ownership-cache"))


def fingerprint_cache() -> Path:
    """The suspect-zoo and fingerprint-training cache (``audit_lib.ownership.fingerprint``)."""
    return Path(os.environ.get("AUDIT_FINGERPRINT_CACHE", PROJECT_ROOT / "var" / "fingerprint"))


def load_zoo(profile: str = "ci", *, build: bool = True, progress: bool = False):  # noqa: ANN201 - ZooManifest
    """The zoo manifest of ``profile``: built (or reused from the cache, a few seconds of
    hash checks) when ``build``, else read from the cache's ``manifest.json``."""
    if build:
        from audit_lib.zoo.build import build_zoo

        return build_zoo(profile, register=False, cache_root=zoo_cache_root(), progress=progress)
    from audit_lib.ownership.data import load_manifest

    return load_manifest(profile, zoo_cache_root())
