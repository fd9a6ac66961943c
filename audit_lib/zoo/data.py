"""Real images for the zoo: ORL faces, the CIFAR-10 subset, or package-shipped fallbacks.

- Faces: ``../shared/data/faces/orl`` (40 people x 10 greyscale 92x112 photos), with a
  fixed pseudonymous name and the presented sex of each person (judged by eye from the
  photos, only so that the pseudonym and the decoy names match it: s8, s10, s32 and s35
  are women).
- Images: ``../shared/data/cifar10/cifar10-subset.npz`` (10,000 train + 2,000 test real
  CIFAR-10 images), read with ``allow_pickle=False``.
- Fallback when ``../shared`` is absent: scikit-learn's digits (1,797 real handwritten
  digits, 8x8 greyscale, shipped in the wheel), upscaled to 32x32 RGB. There are no faces
  with identities in any installed package, so identity entries are skipped then.

Images are handed to training as uint8 arrays (N, H, W, 3) already at the model's input
size (shorter side bicubic, centre crop; :func:`audit_lib.encoders.local.preprocess_uint8`).
For the small CNNs that is the handle's own transform, so training and auditing see the same
pixels; open_clip models are audited through open_clip's ``preprocess_val``, which can differ
from this by rounding on images that are not already at the input size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit_lib import sample_data

ORL_PEOPLE = 40
ORL_PHOTOS = 10
ORL_WOMEN = frozenset({8, 10, 32, 35})
NAME_SEED = 2024  # seed of the pseudonymous names; changing it renames every person


class DataError(ValueError):
    """Real data that is missing or not what it should be; the message names the file."""


@dataclass(frozen=True)
class FacePerson:
    """One ORL identity: folder id (``s1``), pseudonymous name, sex, photo paths (1..10)."""

    person_id: str
    name: str
    sex: str
    photos: tuple[Path, ...]


@dataclass(frozen=True)
class ImageSet:
    """A labelled real image collection, uint8 (N, H, W, 3), split as its source splits it."""

    name: str  # "cifar10" or "digits"
    source: str  # path (or package) it was read from
    sha256: str  # of the source file or arrays
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


def load_faces(faces_dir: Path | None = None) -> list[FacePerson] | None:
    """The 40 ORL people with their pseudonymous names, or None without the shared data."""
    from audit_lib.names import pseudonymous_names

    root = faces_dir or sample_data.faces_dir()
    if root is None:
        return None
    sexes = ["f" if k in ORL_WOMEN else "m" for k in range(1, ORL_PEOPLE + 1)]
    names = pseudonymous_names(ORL_PEOPLE, seed=NAME_SEED, sexes=sexes)
    people = []
    for k, named in enumerate(names, start=1):
        photos = tuple(root / f"s{k}" / f"{i}.pgm" for i in range(1, ORL_PHOTOS + 1))
        missing = [str(p) for p in photos if not p.is_file()]
        if missing:
            raise DataError(f"ORL faces at {root}: missing {', '.join(missing[:3])}")
        people.append(FacePerson(person_id=f"s{k}", name=named.name, sex=named.sex, photos=photos))
    return people


def face_pixels(paths: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """Photos as the handle sees them: uint8 (N, size, size, 3)."""
    from audit_lib.encoders.local import preprocess_uint8

    return np.stack([preprocess_uint8(Path(p).read_bytes(), size) for p in paths])


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_cifar10(path: Path | None = None) -> ImageSet | None:
    """The CIFAR-10 subset, or None without the shared data."""
    path = path or sample_data.cifar10_path()
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as npz:
        missing = {"x_train", "y_train", "x_test", "y_test", "classes"} - set(npz.files)
        if missing:
            raise DataError(f"{path}: arrays {sorted(missing)} are missing")
        arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    for k in ("x_train", "x_test"):
        a = arrays[k]
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != (32, 32, 3):
            raise DataError(f"{path}: {k} is {a.dtype} {a.shape}, expected uint8 (N, 32, 32, 3)")
    return ImageSet(name="cifar10", source=str(path), sha256=_sha256_file(path),
                    x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int64),
                    x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int64),
                    classes=tuple(str(c) for c in arrays["classes"]))


def load_digits_rgb(size: int = 32, test_count: int = 297) -> ImageSet:
    """scikit-learn's digits (real, shipped in the wheel) as uint8 RGB ``size`` x ``size``;
    the last ``test_count`` images are the test split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    arr = (x.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    y = digits.target.astype(np.int64)
    sha = hashlib.sha256(digits.images.tobytes() + y.tobytes()).hexdigest()
    n = len(arr) - test_count
    return ImageSet(name="digits", source="sklearn.datasets.load_digits", sha256=sha,
                    x_train=arr[:n], y_train=y[:n], x_test=arr[n:], y_test=y[n:],
                    classes=tuple(str(i) for i in range(10)))


def load_images() -> ImageSet:
    """CIFAR-10 from the shared data, else the digits fallback."""
    return load_cifar10() or load_digits_rgb()


def to_float(images: np.ndarray):  # noqa: ANN201 - torch.Tensor
    """uint8 (N, H, W, 3) -> float tensor (N, 3, H, W) in [0, 1]."""
    import torch

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def normalize(x, mean: tuple[float, ...], std: tuple[float, ...]):  # noqa: ANN001, ANN201 - tensors
    """Channel-wise normalisation of (N, 3, H, W) float images, as the handle does."""
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, list[int]]:
    """Disjoint random index splits of ``range(n)`` with the given sizes (in order); the rest
    is returned under ``"rest"``."""
    total = sum(sizes.values())
    if total > n:
        raise DataError(f"splits {sizes} need {total} images, only {n} available")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = sorted(int(i) for i in perm[start:start + size])
        start += size
    out["rest"] = sorted(int(i) for i in perm[start:])
    return out
