"""Each checkpoint family's own evaluation transform, and how it is recorded.

A pretrained checkpoint must see the tensor its authors' pipeline gives it: a re-implemented
resize that rounds a side where the original truncates it shifts every pixel and changes
findings. So a :class:`~audit_lib.encoders.architectures.Network` of a family with its own
pipeline carries that pipeline's callable (PIL image -> float tensor ``(3, H, W)``), and the
local handle calls it as it is:

- open_clip: ``preprocess_val`` of ``open_clip.create_model_and_transforms``;
- timm: ``timm.data.create_transform(**resolve_model_data_config(model), is_training=False)``;
- transformers CLIP: the folder's ``CLIPImageProcessor``;
- torchvision: the default weights' documented ``transforms()`` (resize 256 -> crop 224 style).

small_cnn and owner factories keep the project's transform
(:func:`audit_lib.encoders.local.preprocess_uint8`, then scale and normalise).

:func:`describe` turns a transform into JSON-safe data for the model version's preprocess
record, so a change of any step (size, interpolation, crop, mean, std) changes its hash.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (tuples to lists, enums and tensors to text)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def describe(source: str, transform: Callable[[Any], Any], config: dict[str, Any]) -> dict[str, Any]:
    """The record of a family transform: where it comes from, its configuration and its
    printed steps (object addresses removed, so the same pipeline prints the same)."""
    return {"source": source, "config": jsonable(config), "steps": _ADDRESS.sub("", repr(transform))}


def hf_image_processor_transform(processor: Any) -> Callable[[Any], Any]:
    """A transformers image processor as a one-image callable: PIL -> ``(3, H, W)`` tensor."""

    def transform(image: Any) -> Any:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    transform.processor = processor  # type: ignore[attr-defined]
    return transform
