"""Network architectures by name: the one place a checkpoint's module is built.

Architecture strings (stored with every checkpoint model):

- ``open_clip:NAME``: an open_clip model (image and text towers). ``NAME`` is one of
  open_clip's configs or one of ours in ``audit_lib/model_configs/`` (open_clip's JSON
  format), registered with ``open_clip.add_model_config``. Never a pretrained tag: weights
  come from a local file.
- ``open_clip:local-dir:FOLDER``: an open_clip model from a folder holding
  ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
  ``open_clip_model.safetensors``; the weights may be given as the folder.
- ``small_cnn:NAME``: a small convolutional image encoder from ``model_configs/NAME.json``,
  fast enough to train on CPU (the reference zoo's SimCLR encoders).
- ``torchvision:NAME[@SIZE]``: a torchvision backbone, classifier replaced by identity
  (embedding = pooled features), preprocessed as its default weights document (resize 256,
  centre crop 224 for most); ``@SIZE`` sets the crop and scales the resize alike.
- ``timm:NAME[@SIZE]``: ``timm.create_model(NAME, pretrained=False, num_classes=0)``
  (embedding = pooled features), preprocessed by timm's eval transform for the model's data
  config (crop_pct, interpolation, mean, std); ``@SIZE`` sets the input size.
- ``hf-clip:FOLDER``: a Hugging Face ``transformers`` CLIP saved with ``save_pretrained``
  (``config.json``, ``model.safetensors``, tokenizer files, ``preprocessor_config.json``),
  read with ``local_files_only=True``; image and text towers; preprocessed by the folder's
  ``CLIPImageProcessor``. The weights may be given as the folder or its safetensors file.
- ``python:PACKAGE.MODULE:FUNCTION[@SIZE]``: the owner's own factory returning an
  ``nn.Module`` that maps images ``(N, 3, H, W)`` to embeddings, declaring ``image_size``
  (or given ``@SIZE``), ``image_mean`` and ``image_std`` as attributes. Importing it runs
  code, so it is built only when ``AUDIT_ALLOW_PYTHON_FACTORIES=true`` and only for models
  of role ``owned`` (:func:`check_python_factory`).

Preprocessing travels with the architecture (STYLE: open_clip bugs #204, #771) and is
hashed into the model version: the families with a pipeline of their own carry it as
:attr:`Network.transform` (see :mod:`audit_lib.encoders.preprocess`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from audit_lib.encoders.loading import split_architecture

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
    """A built (randomly initialised) network with what is needed to use it.

    ``transform``, when set, is the family's own evaluation transform (PIL image -> float
    tensor ``(3, H, W)``, normalised) and ``transform_info`` its record; without it the
    project's transform applies (``preprocess``). ``config_files`` are the files besides
    the weights that define the network (hashed into the model version)."""

    module: Any  # torch.nn.Module
    preprocess: Preprocess
    embed_dim: int
    encode_image: Callable[[Any], Any]
    encode_text: Callable[[Any], Any] | None = None
    tokenizer: Callable[[list[str]], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    transform: Callable[[Any], Any] | None = None
    transform_info: dict[str, Any] = field(default_factory=dict)
    config_files: tuple[Path, ...] = ()


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


KNOWN_FAMILIES = ("open_clip", "small_cnn", "torchvision", "timm", "hf-clip", "python")


def check_python_factory(architecture: str, role: str | None) -> None:
    """Refuse an owner factory (``python:…``) unless the operator allowed them and the model
    is one the auditing party owns: importing the factory runs its code."""
    from audit_lib.config import get_settings

    if split_architecture(architecture)[0] != "python":
        return
    if not get_settings().allow_python_factories:
        raise ArchitectureError(f"architecture {architecture!r}: python factories run code on import and "
                                "are switched off; set AUDIT_ALLOW_PYTHON_FACTORIES=true to allow them")
    if role != "owned":
        raise ArchitectureError(f"architecture {architecture!r}: python factories are allowed only for "
                                f"models of role owned, not {role or 'an unregistered model'}; save a "
                                "suspect's weights for a named architecture (timm:, hf-clip:, open_clip:) instead")


def _split_size(architecture: str, name: str) -> tuple[str, int | None]:
    if "@" not in name:
        return name, None
    base, _, size = name.rpartition("@")
    if not size.isdigit() or int(size) < 8:
        raise ArchitectureError(f"architecture {architecture!r}: @{size} is not an input size in pixels (>= 8)")
    return base, int(size)


def _folder(architecture: str, name: str, needed: tuple[str, ...]) -> Path:
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ArchitectureError(f"architecture {architecture!r}: {folder} is not a folder (give the local "
                                "folder the model was saved to; nothing is downloaded)")
    absent = [n for n in needed if not (folder / n).is_file()]
    if absent:
        raise ArchitectureError(f"architecture {architecture!r}: {folder} has no {', '.join(absent)}")
    return folder.resolve()


def _zero_forward_dim(module: Any, size: int) -> int:
    import torch

    with torch.inference_mode():
        return int(module(torch.zeros(1, 3, size, size)).reshape(1, -1).shape[-1])


def _pooled(out: Any) -> Any:
    """transformers 5 returns a model output from ``get_*_features``; 4.x a tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _open_clip(architecture: str, name: str) -> Network:
    import open_clip

    from audit_lib.encoders.preprocess import describe

    register_project_configs()
    config_files: tuple[Path, ...] = ()
    if name.startswith("local-dir:"):
        folder = _folder(architecture, name.removeprefix("local-dir:"), ("open_clip_config.json",))
        name = f"local-dir:{folder}"
        config_files = (folder / "open_clip_config.json",)
    elif name not in open_clip.list_models():
        raise ArchitectureError(f"architecture {architecture!r}: open_clip has no config {name!r}")
    model, _, preprocess_val = open_clip.create_model_and_transforms(name, pretrained=None, load_weights=False)
    model.eval()
    cfg = dict(model.visual.preprocess_cfg)
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(cfg.get("mean") or CLIP_MEAN)
    std = tuple(cfg.get("std") or CLIP_STD)
    embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
        else int(model.visual.output_dim)
    info = {"family": "open_clip", "name": name if not config_files else "local-dir"}
    return Network(module=model, preprocess=Preprocess(int(size), mean, std), embed_dim=embed_dim,
                   encode_image=model.encode_image, encode_text=model.encode_text,
                   tokenizer=open_clip.get_tokenizer(name), info=info, transform=preprocess_val,
                   transform_info=describe("open_clip preprocess_val", preprocess_val, cfg),
                   config_files=config_files)


def _timm(architecture: str, name: str) -> Network:
    import timm
    import timm.data

    from audit_lib.encoders.preprocess import describe

    base, size = _split_size(architecture, name)
    if not timm.is_model(base):
        raise ArchitectureError(f"architecture {architecture!r}: timm has no model {base!r}")
    try:
        module = timm.create_model(base, pretrained=False, num_classes=0,
                                   **({"img_size": size} if size else {}))
    except TypeError:  # a convolutional net takes any size: only the transform changes
        module = timm.create_model(base, pretrained=False, num_classes=0)
    module.eval()
    args = {"input_size": (3, size, size)} if size else None
    cfg = timm.data.resolve_model_data_config(module, args=args)
    transform = timm.data.create_transform(**cfg, is_training=False)
    image_size = int(cfg["input_size"][-1])
    return Network(module=module, preprocess=Preprocess(image_size, tuple(cfg["mean"]), tuple(cfg["std"])),
                   embed_dim=_zero_forward_dim(module, image_size), encode_image=module,
                   info={"family": "timm", "name": base}, transform=transform,
                   transform_info=describe("timm eval transform", transform, cfg))


def _hf_clip(architecture: str, name: str) -> Network:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from audit_lib.encoders.preprocess import describe, hf_image_processor_transform

    folder = _folder(architecture, name, ("config.json", "preprocessor_config.json"))
    config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    context = int(config.text_config.max_position_embeddings)

    def tokenizer(texts: list[str]) -> Any:
        return tok(list(texts), padding="max_length", max_length=context, truncation=True, return_tensors="pt")

    def encode_image(x: Any) -> Any:
        return _pooled(model.get_image_features(pixel_values=x))

    def encode_text(tokens: Any) -> Any:
        return _pooled(model.get_text_features(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"]))

    crop = processor.crop_size or {}
    size = int(crop.get("height") or config.vision_config.image_size)
    tokenizer_files = tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.name in (
        "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")))
    cfg = processor.to_dict()
    return Network(module=model, preprocess=Preprocess(size, tuple(processor.image_mean), tuple(processor.image_std)),
                   embed_dim=int(config.projection_dim), encode_image=encode_image, encode_text=encode_text,
                   tokenizer=tokenizer, info={"family": "hf-clip", "name": folder.name},
                   transform=hf_image_processor_transform(processor),
                   transform_info=describe("transformers CLIPImageProcessor", processor, cfg),
                   config_files=(folder / "config.json", folder / "preprocessor_config.json", *tokenizer_files))


def _torchvision(architecture: str, name: str) -> Network:
    import torch.nn as nn
    import torchvision.models as tvm
    from torchvision.transforms._presets import ImageClassification

    from audit_lib.encoders.preprocess import describe

    base, size = _split_size(architecture, name)
    if base not in tvm.list_models(module=tvm):
        raise ArchitectureError(f"architecture {architecture!r}: torchvision has no model {base!r}")
    module = tvm.get_model(base, weights=None)
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(module, head):
            setattr(module, head, nn.Identity())
            break
    module.eval()
    # the documented transform of the default weights (metadata only, nothing downloaded)
    preset = getattr(tvm.get_model_weights(base).DEFAULT.transforms, "keywords", {})
    crop, resize = int(preset.get("crop_size", 224)), int(preset.get("resize_size", 256))
    kwargs = dict(preset)
    if size:
        kwargs.update(crop_size=size, resize_size=int(size * resize / crop))
    transform = ImageClassification(**{"crop_size": crop, **kwargs})
    image_size = int(transform.crop_size[0])
    cfg = {"crop_size": transform.crop_size, "resize_size": transform.resize_size,
           "interpolation": transform.interpolation.value, "antialias": transform.antialias}
    return Network(module=module, preprocess=Preprocess(image_size, tuple(transform.mean), tuple(transform.std)),
                   embed_dim=_zero_forward_dim(module, image_size), encode_image=module,
                   info={"family": "torchvision", "name": base}, transform=transform,
                   transform_info=describe("torchvision weights transforms", transform, cfg))


def _python_factory(architecture: str, name: str) -> Network:
    import importlib

    import torch.nn as nn

    from audit_lib.encoders.loading import file_sha256

    target, size = _split_size(architecture, name)
    module_name, _, function = target.partition(":")
    if not module_name or not function:
        raise ArchitectureError(f"architecture {architecture!r}: expected python:PACKAGE.MODULE:FUNCTION[@SIZE]")
    try:
        py_module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(f"architecture {architecture!r}: cannot import {module_name} ({exc})") from None
    factory = getattr(py_module, function, None)
    if not callable(factory):
        raise ArchitectureError(f"architecture {architecture!r}: {module_name} has no function {function!r}")
    module = factory()
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"architecture {architecture!r}: {function}() returned "
                                f"{type(module).__name__}, not a torch.nn.Module")
    image_size = size or getattr(module, "image_size", None)
    mean, std = getattr(module, "image_mean", None), getattr(module, "image_std", None)
    if not image_size or mean is None or std is None or len(mean) != 3 or len(std) != 3:
        raise ArchitectureError(f"architecture {architecture!r}: the module must declare image_size (or "
                                "give @SIZE), image_mean and image_std (3 numbers each)")
    module.eval()
    source = getattr(py_module, "__file__", None)
    info = {"family": "python", "name": target,
            "source_sha256": file_sha256(Path(source)) if source else None}
    return Network(module=module, preprocess=Preprocess(int(image_size), tuple(map(float, mean)),
                                                       tuple(map(float, std))),
                   embed_dim=_zero_forward_dim(module, int(image_size)), encode_image=module, info=info)


def build(architecture: str, *, role: str | None = None) -> Network:
    """Build the named network with random weights (load a state dict into ``.module``).
    ``role`` is the registered model's role; an owner factory needs ``owned``."""
    family, name = split_architecture(architecture)
    if not name:
        raise ArchitectureError(f"architecture {architecture!r}: expected FAMILY:NAME with FAMILY "
                                f"one of {', '.join(KNOWN_FAMILIES)}")
    if family == "open_clip":
        return _open_clip(architecture, name)
    if family == "small_cnn":
        path = CONFIG_DIR / f"{name}.json"
        if not path.is_file() or "/" in name:
            raise ArchitectureError(f"architecture {architecture!r}: no config {name}.json in {CONFIG_DIR}")
        cfg = json.loads(path.read_text())
        module = _small_cnn(cfg).eval()
        return Network(module=module, preprocess=Preprocess(cfg["image_size"], tuple(cfg["mean"]), tuple(cfg["std"])),
                       embed_dim=cfg["embed_dim"], encode_image=module, info={"family": family, "name": name})
    if family == "torchvision":
        return _torchvision(architecture, name)
    if family == "timm":
        return _timm(architecture, name)
    if family == "hf-clip":
        return _hf_clip(architecture, name)
    if family == "python":
        check_python_factory(architecture, role)
        return _python_factory(architecture, name)
    raise ArchitectureError(f"architecture {architecture!r}: unknown family {family!r} "
                            f"(known: {', '.join(KNOWN_FAMILIES)})")
