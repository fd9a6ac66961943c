"""The zoo manifest: what was built, where its weights are, and which data it saw.

Written by :func:`audit_lib.zoo.build.build_zoo` as ``manifest.json`` beside the cached
entries. Other areas (methods' tests, the demo, enrolment) read it to find targets, shadow
models, null encoders and the data splits that make a member a member.

Splits are indices into the image set named by ``image_set`` (``cifar10`` train or test
arrays of ``../shared/data/cifar10/cifar10-subset.npz``, or the ``digits`` fallback), and
photo paths for faces.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("identity-target", "membership-target", "membership-shadow", "independent")


@dataclass
class ZooPerson:
    """One face identity of the tiny CLIP's training data."""

    person_id: str  # ORL folder, e.g. "s1"
    name: str  # fixed pseudonymous full name
    sex: str  # "f" or "m": decoys are matched to it
    member: bool  # True when the name appeared in training captions
    caption_mode: str  # "named" (name in most captions), "generic" (no name), "absent" (not trained on)
    train_photos: list[str]  # photo paths trained on (empty when absent)
    heldout_photos: list[str]  # photo paths never trained on: the audit photos


@dataclass
class ZooEntry:
    """One trained encoder of the zoo."""

    name: str  # e.g. "tiny-clip", "simclr-target", "independent-03"
    role: str  # one of ROLES
    architecture: str  # for audit_lib.encoders.architectures.build / LocalEncoder.from_checkpoint
    weights_path: str  # absolute path of weights.safetensors (module.state_dict())
    sha256: str  # of the weights file: the model version
    config_hash: str  # cache key: recipe, architecture, data split, seed, kit version, device
    capabilities: list[str]  # ["image"] or ["image", "text"]
    seed: int
    recipe: dict[str, Any]
    splits: dict[str, Any]  # index lists (image encoders) or people (tiny CLIP), see module doc
    metrics: dict[str, Any] = field(default_factory=dict)  # build-summary measurements
    train: dict[str, Any] = field(default_factory=dict)  # steps, losses, wall and CPU seconds
    cached: bool = False  # True when this build reused the entry instead of training it

    @property
    def people(self) -> list[ZooPerson]:
        """The tiny CLIP's people (empty for image-only entries)."""
        return [ZooPerson(**p) for p in self.splits.get("people", [])]


@dataclass
class ZooManifest:
    """Everything a build produced. ``entries`` in build order."""

    profile: str
    root: str  # the profile's cache folder
    device: str
    image_set: dict[str, Any]  # name, source, sha256 of the image collection used
    downstream: dict[str, Any]  # labelled split for utility: {"array": "test", "train": [...], "test": [...]}
    entries: list[ZooEntry]
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"name", "reason"}]
    kit_version: str = ""
    build_wall_s: float = 0.0
    build_cpu_s: float = 0.0

    def entry(self, name: str) -> ZooEntry:
        """The entry called ``name``; KeyError naming the known ones otherwise."""
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"zoo entry {name!r}: not in this manifest (have: {', '.join(e.name for e in self.entries)})")

    def by_role(self, role: str) -> list[ZooEntry]:
        if role not in ROLES:
            raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        return [e for e in self.entries if e.role == role]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False)

    def save(self, path: Path) -> None:
        """Write atomically (temporary file renamed into place)."""
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ZooManifest:
        data = json.loads(Path(path).read_text())
        data["entries"] = [ZooEntry(**e) for e in data["entries"]]
        return cls(**data)
