"""Network architectures by name: the one place a checkpoint's module is built.

Architecture strings (stored with every checkpoint model):

- ``open_clip:NAME``: an open_clip model (image and text towers). ``NAME`` is one of
  open_clip's configs or one of ours in ``audit_lib/model_configs/`` (open_clip's JSON
  format), registered with ``open_clip.add_model_config``. Never a pretrained tag: weights
  come from a local file.
- ``small_cnn:NAME``: a small convolutional image encoder from ``model_configs/NAME.json``,
  fast enough to train on CPU (the reference zoo's SimCLR encoders).
- ``torchvision:NAME[@SIZE]``: a torchvision backbone, classifier replaced by identity
  (embedding = pooled features), input ``SIZE`` pixels (default 224), ImageNet normalisation.

Preprocessing travels with the architecture (STYLE: open_clip bugs #204, #771) and is
hashed into the model version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ArchitectureError(ValueError):
    """An architecture string that names nothing we can build."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor: RGB, resize the shorter side to
    ``image_size`` (bicubic), centre crop, scale to [0, 1], normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Network:
    """A built (randomly initialised) network with what is needed to use it."""

    module: Any  # torch.nn.Module
    preprocess: Preprocess
    embed_dim: int
    encode_image: Callable[[Any], Any]
    encode_text: Callable[[Any], Any] | None = None
    tokenizer: Callable[[list[str]], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def register_project_configs() -> None:
    """Make our open_clip configs known to open_clip (once per process)."""
    import open_clip

    for path in sorted(CONFIG_DIR.glob("*.json")):
        if "vision_cfg" in json.loads(path.read_text()):
            open_clip.add_model_config(path)


def _small_cnn(cfg: dict[str, Any]):
    import torch.nn as nn

    layers: list[nn.Module] = []
    c_in = 3
    for c in cfg["channels"]:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, cfg["embed_dim"])]
    return nn.Sequential(*layers)


def build(architecture: str) -> Network:
    """Build the named network with random weights (load a state dict into ``.module``)."""
    family, _, name = architecture.partition(":")
    if not name:
        raise ArchitectureError(f"architecture {architecture!r}: expected FAMILY:NAME with FAMILY "
                                "one of open_clip, small_cnn, torchvision")
    if family == "open_clip":
        import open_clip

        register_project_configs()
        if name not in open_clip.list_models():
            raise ArchitectureError(f"architecture {architecture!r}: open_clip has no config {name!r}")
        model = open_clip.create_model(name, pretrained=None)
        model.eval()
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = tuple(getattr(model.visual, "image_mean", None) or CLIP_MEAN)
        std = tuple(getattr(model.visual, "image_std", None) or CLIP_STD)
        embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(model.visual.output_dim)
        return Network(module=model, preprocess=Preprocess(int(size), mean, std), embed_dim=embed_dim,
                       encode_image=model.encode_image, encode_text=model.encode_text,
                       tokenizer=open_clip.get_tokenizer(name), info={"family": family, "name": name})
    if family == "small_cnn":
        path = CONFIG_DIR / f"{name}.json"
        if not path.is_file() or "/" in name:
            raise ArchitectureError(f"architecture {architecture!r}: no config {name}.json in {CONFIG_DIR}")
        cfg = json.loads(path.read_text())
        module = _small_cnn(cfg).eval()
        return Network(module=module, preprocess=Preprocess(cfg["image_size"], tuple(cfg["mean"]), tuple(cfg["std"])),
                       embed_dim=cfg["embed_dim"], encode_image=module, info={"family": family, "name": name})
    if family == "torchvision":
        import torch.nn as nn
        import torchvision.models as tvm

        base, _, size = name.partition("@")
        if base not in tvm.list_models(module=tvm):
            raise ArchitectureError(f"architecture {architecture!r}: torchvision has no model {base!r}")
        module = tvm.get_model(base, weights=None)
        for head in ("fc", "classifier", "head", "heads"):
            if hasattr(module, head):
                setattr(module, head, nn.Identity())
                break
        module.eval()
        image_size = int(size) if size else 224
        import torch

        with torch.inference_mode():
            dim = int(module(torch.zeros(1, 3, image_size, image_size)).shape[-1])
        return Network(module=module, preprocess=Preprocess(image_size, IMAGENET_MEAN, IMAGENET_STD),
                       embed_dim=dim, encode_image=module, info={"family": family, "name": base})
    raise ArchitectureError(f"architecture {architecture!r}: unknown family {family!r} "
                            "(known: open_clip, small_cnn, torchvision)")
