"""Fixtures of the fingerprint area: the ci suspect zoo and a trained, calibrated enrolment.

Both are cached under ``var/fingerprint`` (keyed by config hashes), so only the first run on
a machine trains; the reference zoo comes from the zoo area's ``ci_zoo`` fixture when it is
defined, else from ``build_zoo("ci")`` (the same cache).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_lib.config import PROJECT_ROOT

FINGERPRINT_CACHE = PROJECT_ROOT / "var" / "fingerprint"
CI_FINGERPRINTS = 16  # N: queries per verification in the tests (the CLI default is 32)
CI_STEPS = 60


def tiny_network(seed: int, dim: int = 8, size: int = 16):  # noqa: ANN201 - Network
    """A very small conv encoder (16 px in, ``dim`` out) for unit tests of the pure parts."""
    import torch
    import torch.nn as nn

    from audit_lib.encoders.architectures import Network, Preprocess

    torch.manual_seed(seed)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(16, dim)).eval()
    return Network(module=module, preprocess=Preprocess(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                   embed_dim=dim, encode_image=module, info={"family": "test", "name": f"tiny-{seed}"})


@pytest.fixture(scope="session")
def fingerprint_reference(ci_zoo):  # noqa: ANN201
    """(owned architecture, owned weights path, independent encoders) from the ci zoo."""
    from audit_lib.zoo.suspects import IndependentModel

    manifest = ci_zoo
    target = manifest.entry("simclr-target")
    independents = [IndependentModel(e.name, e.architecture, Path(e.weights_path))
                    for e in manifest.by_role("independent")]
    return target.architecture, Path(target.weights_path), independents


@pytest.fixture(scope="session")
def ci_suspect_zoo(fingerprint_reference):  # noqa: ANN201
    """The ci suspect zoo of the zoo's SimCLR target (built once, then cached)."""
    from audit_lib.ownership.fingerprint import enrolment_images
    from audit_lib.encoders.architectures import build
    from audit_lib.zoo.suspects import build_suspect_zoo, get_profile

    from tests.conftest import cache_lock

    arch, weights, independents = fingerprint_reference
    zoo_images, init_images = enrolment_images(build(arch).preprocess.image_size)
    with cache_lock("fingerprint"):
        zoo = build_suspect_zoo(arch, weights, independents, zoo_images, FINGERPRINT_CACHE / "suspect-zoo",
                                get_profile("ci"))
    return zoo, init_images


@pytest.fixture(scope="session")
def ci_fingerprint(ci_suspect_zoo):  # noqa: ANN201
    """A trained and calibrated fingerprint enrolment on the ci suspect zoo (cached)."""
    from audit_lib.methods.fingerprint import FingerprintConfig
    from audit_lib.ownership.fingerprint import train_or_load

    from tests.conftest import cache_lock

    zoo, init_images = ci_suspect_zoo
    cfg = FingerprintConfig(n_fingerprints=CI_FINGERPRINTS, steps=CI_STEPS)
    with cache_lock("fingerprint"):
        return train_or_load(zoo, init_images, cfg, FINGERPRINT_CACHE / "trained", alpha=0.01)
