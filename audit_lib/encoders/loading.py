"""Loading checkpoint weights safely: a checkpoint is untrusted input (DESIGN §3).

- ``.safetensors``: read with safetensors (no code can run).
- ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``: ``torch.load(..., weights_only=True)``; a pickle
  that would run code (``__reduce__`` to ``os.system`` …) is refused with
  :class:`CheckpointError`, before anything in it executes.
- The state dict is loaded *strictly*: a missing or unexpected key, or a shape that does
  not fit, is an error. A model silently left with random weights would make every
  finding on it meaningless.
- Pretrained tags (open_clip ``openai``, ``laion2b_…``, ``hf-hub:…``) would reach the
  network; they are refused unless the operator sets ``AUDIT_ALLOW_HUB_DOWNLOADS=true``.

The model version of a checkpoint is the sha256 of its weights file (:func:`file_sha256`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A weights file that cannot be used as it is; the message names file and problem."""


class HubDownloadRefused(CheckpointError):
    """Pretrained weights were asked for by tag while hub downloads are switched off."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (checkpoints can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_pretrained_tag(weights: str | Path) -> bool:
    """True for ``hf-hub:…`` and bare open_clip tags such as ``openai`` (no such file)."""
    text = str(weights)
    if text.startswith("hf-hub:"):
        return True
    return not Path(text).exists() and "/" not in text and "." not in text and text != ""


def refuse_hub_download(architecture: str, tag: str) -> HubDownloadRefused:
    """The error for a pretrained tag while downloads are off, saying what to do instead."""
    return HubDownloadRefused(
        f"weights {tag!r} for {architecture}: this is a pretrained tag that would be downloaded "
        "from a model hub, and hub downloads are switched off (AUDIT_ALLOW_HUB_DOWNLOADS is "
        "false). Download the weights on a machine that may, save them as a .safetensors file "
        "(or a weights-only .pt state dict), and pass that file's path instead; or set "
        "AUDIT_ALLOW_HUB_DOWNLOADS=true to let this machine download them.")


def download_pretrained(architecture: str, tag: str) -> Path:
    """Fetch open_clip pretrained weights (only when the operator allowed hub downloads)."""
    from audit_lib.config import get_settings

    if not get_settings().allow_hub_downloads:
        raise refuse_hub_download(architecture, tag)
    family, _, name = architecture.partition(":")
    if family != "open_clip":
        raise CheckpointError(f"weights {tag!r}: pretrained tags exist only for open_clip models, "
                              f"not {architecture}")
    import open_clip
    from open_clip import pretrained as ocp

    if tag.startswith("hf-hub:"):
        return Path(ocp.download_pretrained_from_hf(tag.removeprefix("hf-hub:")))
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise CheckpointError(f"weights {tag!r}: open_clip has no pretrained tag {tag!r} for {name}")
    return Path(ocp.download_pretrained(cfg))


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors in a weights file, without running any code it may contain."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"weights {path}: not a readable safetensors file ({exc})") from None
    if suffix in PICKLE_SUFFIXES:
        import pickle

        import torch

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"weights {path}: refused, the pickle holds more than tensors and loading it "
                f"could run code ({first[:200]}). Convert it to safetensors on a trusted machine."
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"weights {path}: not a readable torch checkpoint ({exc})") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"weights {path}: expected a state dict (names -> tensors), "
                                  f"found {type(obj).__name__}")
        return obj
    raise CheckpointError(f"weights {path}: unknown file type {suffix!r} (use .safetensors, or "
                          f"a weights-only {'/'.join(PICKLE_SUFFIXES)} state dict)")


def load_into(module: Any, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``module`` strictly; any missing, unexpected or misshapen tensor
    is a :class:`CheckpointError` naming the first few offenders."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {label} ({shown})")
    if problems:
        raise CheckpointError(f"weights {source} do not fit the architecture: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def save_weights(module: Any, path: Path) -> str:
    """Save a module's state dict as safetensors; returns the file's sha256 (its version)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return file_sha256(path)
