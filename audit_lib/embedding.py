"""Embeddings of arrays by a local network, and the torch thread setting, shared by the
methods' training steps (fingerprint, watermark, theft), the zoo and the evaluation.

These are for networks the audit holds in memory (the zoo, an owned checkpoint being
enrolled, a stolen copy being trained). A model under audit is always queried through its
handle (:func:`audit_lib.encoders.open_handle`), never through these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from audit_lib.encoders.architectures import Network


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads, restoring the previous setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def normalise_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float64 (zero rows stay zero)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def embed_images(network: Network, images: np.ndarray | torch.Tensor, *, batch_size: int | None = None) -> np.ndarray:
    """A network's image embeddings, float32 (N, d), not normalised: uint8 (N, H, W, 3) or
    float (N, 3, H, W) in [0, 1] images at the size given, scaled with the network's own mean
    and std, in batches of ``batch_size`` (None: one batch). The module's train/eval mode is
    the caller's."""
    import torch

    x = images if isinstance(images, torch.Tensor) else _to_float(images)
    pre = network.preprocess
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    step = len(x) if batch_size is None else int(batch_size)
    with torch.inference_mode():
        out = [network.encode_image((x[i:i + step] - mean) / std).float() for i in range(0, len(x), max(1, step))]
    return torch.cat(out).numpy() if out else np.zeros((0, network.embed_dim), np.float32)


def embed_pngs(network: Network, pngs: Sequence[bytes]) -> np.ndarray:
    """Embeddings of PNG files by a local network with the handles' own preprocessing
    (``audit_lib.encoders.local.preprocess_uint8``): a network in memory scored exactly as
    a query through a handle would see it."""
    import torch

    from audit_lib.encoders.local import preprocess_uint8

    pre = network.preprocess
    arr = np.stack([preprocess_uint8(data, pre.image_size) for data in pngs])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    device = next(iter(network.module.parameters())).device
    with torch.inference_mode():
        emb = network.encode_image(((x - mean) / std).to(device))
    return emb.float().cpu().numpy()


def _to_float(images: np.ndarray) -> Any:
    """uint8 (N, H, W, 3) -> float tensor (N, 3, H, W) in [0, 1]."""
    import torch

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
