"""The images an ownership audit works with: taken from the reference zoo's manifest here
(:func:`ownership_data`, the reference measurement), or from the image sets an owner
registered for their own model (:func:`audit_lib.ownership.owner_data.owner_ownership_data`).

- ``surrogate``: the attacker's images for theft simulation: the image set's ``public``
  split (never in the target's training or hold-out data), in a fixed shuffled order so
  larger budgets extend smaller ones;
- ``downstream``: the zoo's labelled downstream split (CIFAR-10 test images: train / test)
  on which utility, agreement and the black-box watermark are measured;
- ``owner_clean``: the owner's own training images (the target's members), on which the
  watermark is fine-tuned in;
- ``pool`` / ``pool_labels``: candidates for the watermark key, marked set and probes: the
  target's known non-members, disjoint from everything above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.methods.theft import LabelledSplit


@dataclass
class OwnershipData:
    """Images and labels for theft and watermark work on one target: a zoo entry, or a
    registered model with the image sets its owner registered."""

    target: Any  # a ZooEntry, or the registered AuditedModel (detached)
    independents: list[Any]  # the null population: ZooEntry list, or registered reference models
    train_size: int | None  # the target's training-set size (budgets are shares of it); None: not stated
    surrogate: np.ndarray
    downstream: LabelledSplit
    owner_clean: np.ndarray
    pool: np.ndarray
    pool_labels: np.ndarray | None
    image_sets: dict[str, str] = field(default_factory=dict)  # role -> manifest sha256 (zoo: "zoo:<sha>")


def load_manifest(profile: str = "ci", zoo_cache: Path | None = None) -> Any:
    """The zoo manifest of ``profile`` (built by ``encoder-audit zoo build``) under the zoo
    cache root ``zoo_cache`` (default ``{AUDIT_DATA_DIR}/zoo``)."""
    from audit_lib.zoo.build import zoo_root
    from audit_lib.zoo.manifest import ZooManifest

    path = zoo_root(profile, Path(zoo_cache) if zoo_cache else None) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no zoo manifest at {path}: run `encoder-audit zoo build --profile {profile}` first")
    return ZooManifest.load(path)


def _per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def ownership_data(manifest: Any, target: str = "simclr-target", *, seed: int = 0,
                   downstream_per_class: int | None = None) -> OwnershipData:
    """Split the zoo's image set for theft and watermark work on the entry ``target``.
    ``downstream_per_class`` subsamples the downstream train and test images (quick runs)."""
    from audit_lib.zoo.build import get_profile, image_splits
    from audit_lib.zoo.data import load_images

    entry = manifest.entry(target)
    images = load_images()
    if images.sha256 != manifest.image_set.get("sha256"):
        raise ValueError(f"the image set on this machine ({images.name}, {images.sha256[:12]}…) is not the one "
                         f"the zoo was built on ({manifest.image_set.get('sha256', '?')[:12]}…)")
    splits = image_splits(get_profile(manifest.profile), images)
    members = list(entry.splits.get("members", []))
    nonmembers = list(entry.splits.get("nonmembers", []))
    if not members or not nonmembers:
        raise ValueError(f"zoo entry {target}: needs known members and non-members in its splits")
    public = np.asarray(splits["public"])
    public = public[np.random.default_rng(seed).permutation(len(public))]
    d = manifest.downstream
    x_d, y_d = (images.x_test, images.y_test) if d.get("array") == "test" else (images.x_train, images.y_train)
    tr, te = np.asarray(d["train"]), np.asarray(d["test"])
    if downstream_per_class:
        tr = tr[_per_class(y_d[tr], downstream_per_class, seed)]
        te = te[_per_class(y_d[te], downstream_per_class, seed + 1)]
    downstream = LabelledSplit(x_d[tr], y_d[tr], x_d[te], y_d[te])
    zoo_set = f"zoo:{manifest.profile}:{images.sha256}"
    return OwnershipData(target=entry, independents=manifest.by_role("independent"), train_size=len(members),
                         surrogate=images.x_train[public], downstream=downstream,
                         owner_clean=images.x_train[members], pool=images.x_train[nonmembers],
                         pool_labels=images.y_train[nonmembers],
                         image_sets={role: zoo_set for role in ("owner", "public", "downstream")})
