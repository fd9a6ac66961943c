"""A local checkpoint as an encoder handle: every family of
:mod:`audit_lib.encoders.architectures` (open_clip, timm, transformers CLIP, torchvision,
small CNN, owner factories).

Speed is this module's business, not the methods':

- device: cuda when present, else cpu; batch size from a per-device default;
- mixed precision on GPU (bf16 where supported, else fp16) via autocast; ``inference_mode``;
- decoding and preprocessing run in a thread pool, a few batches ahead of the model, so the
  forward pass never waits on PIL (PIL and torch release the GIL in their heavy loops).

Embeddings are returned as float32 ``(n, d)`` and *not* normalised: each method decides.
The version is the sha256 of the weights file (with a folder family's config files, see
:func:`audit_lib.encoders.loading.weights_version`). Images go through the family's own
evaluation transform where it has one (:mod:`audit_lib.encoders.preprocess`), pixel for
pixel, else through :func:`preprocess_uint8`; the preprocessing is recorded beside the
version (:attr:`LocalEncoder.preprocess_info`) because wrong preprocessing gives silently
wrong embeddings (open_clip bugs #204, #771).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.encoders.base import NotApplicable

log = logging.getLogger(__name__)

DEFAULT_BATCH = {"cpu": 64, "cuda": 256}
PREFETCH_BATCHES = 2


def default_device() -> str:
    """``cuda`` when a GPU is visible to torch, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _to_pil(image: Any):  # noqa: ANN202 - PIL.Image.Image
    """One input as an RGB PIL image; bytes that carry their decoded pixels (an EncoderMI
    view, :class:`audit_lib.methods.views.View`) are not decoded again."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    pixels = getattr(image, "pixels", None)
    if isinstance(pixels, Image.Image):
        return pixels.convert("RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image))).convert("RGB")
    raise TypeError(f"an image must be encoded bytes or a PIL image, not {type(image).__name__}")


def preprocess_uint8(image: Any, size: int) -> np.ndarray:
    """Decode one image and bring it to ``size`` x ``size`` RGB uint8: shorter side resized
    to ``size`` (bicubic, the longer side rounded), centre crop. The project's own transform
    (small_cnn, owner factories, the zoo's training and the methods' uint8 arrays); it is
    not open_clip's, which truncates the longer side: the handle uses each family's own."""
    from PIL import Image

    img = _to_pil(image)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (nw, nh) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


class LocalEncoder:
    """An in-process network behind the :class:`~audit_lib.encoders.base.EncoderHandle`
    protocol. Build it with :meth:`from_checkpoint` (a weights file) or
    :meth:`from_network` (a network already in memory, e.g. one the zoo just trained)."""

    version_method = "weights"

    def __init__(self, network: Any, weights_sha256: str, *, device: str | None = None,
                 batch_size: int | None = None, amp: bool | None = None,
                 workers: int | None = None, source: str = "memory") -> None:
        import torch

        self.network = network
        self.device = device or default_device()
        self.batch_size = int(batch_size or DEFAULT_BATCH.get(self.device.split(":")[0], 64))
        if self.batch_size <= 0:
            raise ValueError(f"batch size {self.batch_size}: must be positive")
        on_gpu = self.device.startswith("cuda")
        self.amp = on_gpu if amp is None else (bool(amp) and on_gpu)
        self.amp_dtype = (torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float16)
        self.source = source
        self._version = weights_sha256
        self.network.module.to(self.device).eval()
        pp = network.preprocess
        self._mean = torch.tensor(pp.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(pp.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._workers = workers or max(1, min(4, (os.cpu_count() or 2)))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, architecture: str, weights_path: Path | str, *, device: str | None = None,
                        batch_size: int | None = None, amp: bool | None = None,
                        role: str | None = None) -> LocalEncoder:
        """Build ``architecture`` (see :func:`audit_lib.encoders.architectures.build`) and load
        ``weights_path`` (a file, or a folder family's folder) strictly; a pretrained tag is
        downloaded only if the operator allowed it (``AUDIT_ALLOW_HUB_DOWNLOADS``), else
        refused with instructions. ``role`` is the registered model's role (an owner
        factory, ``python:…``, loads only for ``owned``)."""
        from audit_lib.encoders.architectures import build, check_python_factory
        from audit_lib.encoders.loading import (download_pretrained, is_pretrained_tag, load_into,
                                                read_state_dicts, weights_files, weights_version)

        check_python_factory(architecture, role)  # before any file is read or code imported
        if is_pretrained_tag(weights_path):
            weights_path = download_pretrained(architecture, str(weights_path))
        path = Path(weights_path)
        files = weights_files(architecture, path)
        state = read_state_dicts(files)  # fails before the (slower) build on a bad file
        network = build(architecture, role=role)
        load_into(network.module, state, str(path))
        log.info("loaded %s from %s", architecture, path)
        return cls(network, weights_version(files, network.config_files), device=device,
                   batch_size=batch_size, amp=amp, source=str(path))

    @classmethod
    def from_network(cls, network: Any, weights_sha256: str, *, device: str | None = None,
                     batch_size: int | None = None, amp: bool | None = None) -> LocalEncoder:
        """Wrap a network already in memory; ``weights_sha256`` names its weights (e.g. the
        sha256 of the safetensors file it was saved to)."""
        return cls(network, weights_sha256, device=device, batch_size=batch_size, amp=amp)

    # --- the handle protocol ------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"image", "text"}) if self.network.encode_text is not None else frozenset({"image"})

    @property
    def embedding_dim(self) -> int:
        return int(self.network.embed_dim)

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def preprocess_info(self) -> dict[str, Any]:
        """The preprocessing that belongs to these weights, with its own hash."""
        from audit_lib.evidence import canonical_json, sha256_hex

        net = self.network
        if net.transform is not None:
            info = {"architecture": net.info, **net.preprocess.as_dict(),
                    "resize": net.transform_info.get("source", "family transform"),
                    "transform": net.transform_info}
        else:
            info = {"architecture": net.info, **net.preprocess.as_dict(),
                    "resize": "shorter-side bicubic, centre crop"}
        return {**info, "sha256": sha256_hex(canonical_json(info))}

    def encode_images(self, images: Sequence[Any], *, kind: str = "image") -> np.ndarray:
        """Embed encoded images (bytes) or PIL images; float32 ``(n, embedding_dim)``."""
        n = len(images)
        if n == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        starts = list(range(0, n, self.batch_size))
        pool = self._executor()
        pending: deque = deque()
        out = np.empty((n, self.embedding_dim), dtype=np.float32)
        it = iter(starts)

        def submit_next() -> None:
            start = next(it, None)
            if start is not None:
                pending.append((start, pool.submit(self._prepare, images[start:start + self.batch_size])))

        for _ in range(PREFETCH_BATCHES + 1):
            submit_next()
        while pending:
            start, fut = pending.popleft()
            batch = fut.result()
            submit_next()
            out[start:start + len(batch)] = self.forward_tensors(batch)
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the model's tokenizer; :class:`NotApplicable` for image-only models."""
        if self.network.encode_text is None or self.network.tokenizer is None:
            raise NotApplicable(f"{self.network.info.get('name', 'this model')} has no text tower")
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            out[start:start + len(chunk)] = self.forward_tokens(self.network.tokenizer(chunk))
        return out

    # --- pieces the benchmark and the methods can use directly --------------------------
    def preprocess(self, images: Sequence[Any]):  # noqa: ANN201 - torch.Tensor
        """Decode and preprocess images into a normalised float32 tensor (n, 3, s, s): the
        family's own evaluation transform where it has one."""
        return self._prepare(images)

    def forward_tensors(self, batch: Any) -> np.ndarray:
        """The model on already preprocessed tensors (one batch); float32 numpy."""
        import torch

        with self._lock, torch.inference_mode(), self._autocast():
            emb = self.network.encode_image(batch.to(self.device, non_blocking=True))
        return emb.float().cpu().numpy()

    def forward_tokens(self, tokens: Any) -> np.ndarray:
        """The text tower on already tokenized texts (one batch); float32 numpy."""
        import torch

        with self._lock, torch.inference_mode(), self._autocast():
            emb = self.network.encode_text(tokens.to(self.device))
        return emb.float().cpu().numpy()

    def close(self) -> None:
        """Stop the preprocessing threads (they also stop with the process)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # --- internals ----------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="encoder-preprocess")
        return self._pool

    def _prepare(self, images: Sequence[Any]):  # noqa: ANN202 - torch.Tensor
        import torch

        transform = self.network.transform
        if transform is not None:
            x = torch.stack([transform(_to_pil(im)) for im in images]).float().contiguous()
        else:
            size = self.network.preprocess.image_size
            arr = np.stack([preprocess_uint8(im, size) for im in images])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
            x = x.sub_(self._mean).div_(self._std).contiguous()
        if self.device.startswith("cuda"):
            x = x.pin_memory()
        return x

    def _autocast(self):  # noqa: ANN202 - a context manager
        import contextlib

        import torch

        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
