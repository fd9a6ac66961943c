"""Fixtures for encoder handles and the reference server, shared with other areas.

- ``small_cnn_weights`` / ``small_cnn_weights_b``: two random-weight ``small_cnn:small-cnn-32``
  checkpoints (different seeds) as safetensors files: ``(architecture, path)``.
- ``tiny_clip_weights``: a random-weight ``open_clip:tiny-clip-vit`` checkpoint (image + text).
- ``png_images``: 24 real CIFAR-10 test images as PNG bytes (scikit-image crops without the
  shared data).
- ``reference_server``: a factory; ``with reference_server(keys) as url:`` starts the real
  server on 127.0.0.1 (a free port) for the small CNN. ``url.stats`` counts requests.
  For other checkpoints use :func:`audit_lib.server.testing.running_server` directly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest


def make_checkpoint(architecture: str, path: Path, seed: int) -> Path:
    """Build ``architecture`` with seeded random weights and save them as safetensors."""
    import torch

    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.loading import save_weights

    torch.manual_seed(seed)
    net = build(architecture)
    save_weights(net.module, path)
    return path


@pytest.fixture(scope="session")
def small_cnn_weights(tmp_path_factory) -> tuple[str, Path]:
    arch = "small_cnn:small-cnn-32"
    return arch, make_checkpoint(arch, tmp_path_factory.mktemp("ckpt") / "small-cnn-a.safetensors", 1)


@pytest.fixture(scope="session")
def small_cnn_weights_b(tmp_path_factory) -> tuple[str, Path]:
    arch = "small_cnn:small-cnn-32"
    return arch, make_checkpoint(arch, tmp_path_factory.mktemp("ckpt") / "small-cnn-b.safetensors", 2)


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory) -> tuple[str, Path]:
    arch = "open_clip:tiny-clip-vit"
    return arch, make_checkpoint(arch, tmp_path_factory.mktemp("ckpt") / "tiny-clip.safetensors", 3)


@pytest.fixture(scope="session")
def png_images() -> list[bytes]:
    """Real photographs as PNG bytes: CIFAR-10 test images, or scikit-image crops."""
    from PIL import Image

    from audit_lib.sample_data import cifar10_path

    path = cifar10_path()
    if path is not None:
        with np.load(path) as npz:
            arrays = list(npz["x_test"][:24])
    else:  # pragma: no cover - machines without the shared data
        from skimage import data

        big = data.astronaut()
        arrays = [big[i * 20:i * 20 + 64, i * 16:i * 16 + 64] for i in range(24)]
    out = []
    for arr in arrays:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture
def reference_server(small_cnn_weights):
    """Factory: ``with reference_server({"sk-key": {...settings}}, port=0) as url: ...``."""
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.server.testing import running_server

    arch, path = small_cnn_weights
    encoder = LocalEncoder.from_checkpoint(arch, path, batch_size=32)

    def start(keys: dict | None, *, port: int = 0, encoder_override=None):  # noqa: ANN001, ANN202
        return running_server(keys=keys, encoder=encoder_override or encoder, port=port)

    return start
