"""Training recipes of the reference zoo as typed dataclasses (STYLE: recipes are data).

A recipe holds every number that changes the trained weights; its ``as_dict()`` goes into
the entry's config hash, so changing any field retrains that entry and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR-style augmentation (Chen et al., ICML 2020, arXiv 2002.05709, Appendix A)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)  # random resized crop: area share range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect range
    flip_p: float = 0.5  # horizontal flip probability
    jitter_p: float = 0.8  # probability of applying colour jitter
    brightness: float = 0.4  # colour jitter strengths, as torchvision's ColorJitter
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2  # probability of converting to greyscale

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: Faces are greyscale and centred: milder crops, no hue or saturation change.
FACE_AUGMENT = AugmentConfig(crop_scale=(0.5, 1.0), crop_ratio=(0.8, 1.25), jitter_p=0.8,
                             brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0,
                             grayscale_p=0.0)


@dataclass(frozen=True)
class SimCLRRecipe:
    """Image-only contrastive pre-training with the NT-Xent loss."""

    epochs: int = 50  # passes over the training images
    batch_size: int = 256  # images per step (2 views each)
    lr: float = 3e-3  # AdamW learning rate (cosine schedule to 0 after warm-up)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 10  # linear learning-rate warm-up
    temperature: float = 0.2  # NT-Xent temperature
    proj_dim: int = 0  # projection head output size; 0 = loss on the encoder output itself
    max_steps: int = 0  # stop after this many steps (0 = no limit; for quick tests)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        d["kind"] = "simclr"
        return d


@dataclass(frozen=True)
class ClipRecipe:
    """Image-caption contrastive training with CLIP's symmetric loss."""

    epochs: int = 60  # passes over the image-caption pairs
    batch_size: int = 64  # pairs per step
    lr: float = 1e-3  # AdamW learning rate (cosine schedule after warm-up)
    weight_decay: float = 0.05  # AdamW weight decay
    warmup_steps: int = 20  # linear learning-rate warm-up
    group_targets: bool = True  # pairs with the same caption group are positives (UniCL)
    max_steps: int = 0  # stop after this many steps (0 = no limit; for quick tests)
    augment: AugmentConfig = field(default_factory=lambda: FACE_AUGMENT)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        d["kind"] = "clip"
        return d
