"""Loading checkpoint weights safely: a checkpoint is untrusted input.

- ``.safetensors``: read with safetensors (no code can run).
- ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``: ``torch.load(..., weights_only=True)``; a pickle
  that would run code (``__reduce__`` to ``os.system`` …) is refused with
  :class:`CheckpointError`, before anything in it executes.
- The state dict is loaded *strictly*: a missing or unexpected key, or a shape that does
  not fit, is an error. A model silently left with random weights would make every
  finding on it meaningless.
- Pretrained tags (open_clip ``openai``, ``laion2b_…``, ``hf-hub:…``) would reach the
  network; they are refused unless the operator sets ``AUDIT_ALLOW_HUB_DOWNLOADS=true``.

The model version of a checkpoint is the sha256 of its weights file (:func:`file_sha256`);
for a family defined by files beside the weights (``hf-clip:FOLDER``,
``open_clip:local-dir:FOLDER``) it is the sha256 over the weights file(s) and those
config files (:func:`weights_version`). Those families accept the folder itself as the
weights path (:func:`weights_files`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# weights file names looked for, in order, when a folder is given as the weights
FOLDER_WEIGHTS = {
    "hf-clip": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
    "open_clip:local-dir": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
}


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


def split_architecture(architecture: str) -> tuple[str, str]:
    """``"timm:resnet10t@64"`` -> ``("timm", "resnet10t@64")``; the name may hold colons."""
    family, _, name = str(architecture).partition(":")
    return family, name


def folder_kind(architecture: str) -> str | None:
    """The key of :data:`FOLDER_WEIGHTS` whose weights may be given as a folder, or None."""
    family, name = split_architecture(architecture)
    if family == "hf-clip":
        return "hf-clip"
    if family == "open_clip" and name.startswith("local-dir:"):
        return "open_clip:local-dir"
    return None


def weights_files(architecture: str, weights: Path) -> list[Path]:
    """The weights file(s) to load: ``weights`` itself, or for a folder family given its
    folder, the folder's weights file (all shards of a sharded safetensors index)."""
    import json

    weights = Path(weights)
    if not weights.is_dir():
        return [weights]
    kind = folder_kind(architecture)
    if kind is None:
        raise CheckpointError(f"weights {weights}: a folder, but {architecture} needs a weights file (a "
                              "folder is accepted for hf-clip:FOLDER and open_clip:local-dir:FOLDER)")
    for name in FOLDER_WEIGHTS[kind]:
        path = weights / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"weights {path}: not a safetensors index ({exc})") from None
            if not shards or any("/" in s or "\\" in s for s in shards):
                raise CheckpointError(f"weights {path}: the index must name shard files in its folder")
            return [weights / s for s in shards]
        return [path]
    raise CheckpointError(f"weights {weights}: no {' or '.join(FOLDER_WEIGHTS[kind])} in this folder")


def read_state_dicts(paths: list[Path]) -> dict[str, Any]:
    """:func:`read_state_dict` over one or more files (shards); a tensor in two is an error."""
    state: dict[str, Any] = {}
    for path in paths:
        part = read_state_dict(path)
        twice = sorted(set(part) & set(state))
        if twice:
            raise CheckpointError(f"weights {path}: {len(twice)} tensors also in another shard ({twice[0]})")
        state.update(part)
    return state


def weights_version(weights: list[Path], config_files: tuple[Path, ...] | list[Path] = ()) -> str:
    """The model version: a single weights file's sha256 (as before), or with config files
    (or several shards) the sha256 over each file's name and sha256, so the same folder
    gives the same version wherever it lies."""
    if len(weights) == 1 and not config_files:
        return file_sha256(weights[0])
    h = hashlib.sha256(b"encoder-audit weights+config v1\0")
    for role, paths in (("weights", weights), ("config", sorted(config_files))):
        for path in paths:
            h.update(f"{role}\0{Path(path).name}\0{file_sha256(Path(path))}\n".encode())
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
