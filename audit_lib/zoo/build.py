"""Build, cache and register the reference zoo.

``build_zoo(profile)`` trains every entry of the profile (:mod:`audit_lib.zoo.profiles`)
that is not cached yet, measures it, writes ``manifest.json`` and registers each entry as
a checkpoint model in the evidence store.

Cache layout: ``{AUDIT_DATA_DIR}/zoo/<profile>/<entry>-<config hash[:12]>/`` holding
``weights.safetensors`` (``module.state_dict()``) and ``meta.json``. The config hash covers
the recipe, architecture (and its JSON config), the exact training data (image-set hash and
indices, or photo hashes and captions), the seed, the training kit's source code, the
torch version, the device type and CPU thread count: an entry is reused only when all of
these match and its weights still have the recorded sha256. Each entry has its own file
lock: concurrent builds of one profile (test workers, the demo) split the entries between
them, each training what nobody else is training, then wait for and load the rest; none
trains an entry twice. An entry with the same config hash cached under another profile
(the ``demo`` profile shares its entries with ``ci``) is copied rather than trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.config import get_settings
from audit_lib.zoo.data import FacePerson, ImageSet, face_pixels, load_faces, load_images, split_indices
from audit_lib.zoo.manifest import ZooEntry, ZooManifest, ZooPerson
from audit_lib.zoo.profiles import SPLIT_NAMES, ClipEntrySpec, ImageEntrySpec, Profile, get_profile

log = logging.getLogger(__name__)
KIT_FILES = ("augment.py", "data.py", "losses.py", "train.py")
GENERIC_CAPTIONS = ("a photo of a person", "a photo of someone", "a portrait of a person", "a face",
                    "an image of a person", "a black and white photo of a person", "a cropped photo of a face")


def kit_version() -> str:
    """sha256 over the training kit's source files and the architecture builder: a change
    to how encoders are trained retrains them."""
    from audit_lib.encoders import architectures

    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in [*(here / f for f in KIT_FILES), Path(architectures.__file__)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def registry_name(profile: str, entry: str) -> str:
    """The name a zoo entry is registered under in the evidence store."""
    return f"zoo-{profile}-{entry}"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _arch_config(architecture: str) -> Any:
    from audit_lib.encoders.architectures import CONFIG_DIR

    name = architecture.partition(":")[2].partition("@")[0]
    path = CONFIG_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else architecture


def config_hash(spec: dict[str, Any], recipe: dict[str, Any], architecture: str, data: dict[str, Any],
                seed: int, device: str, kit: str) -> str:
    """The cache key of one entry (see the module docstring for what it covers)."""
    import torch

    from audit_lib.zoo.train import CPU_THREADS

    return _sha({"spec": spec, "recipe": recipe, "architecture": architecture,
                 "architecture_config": _arch_config(architecture), "data": data, "seed": seed,
                 "kit": kit, "torch": torch.__version__.split("+")[0],
                 "device": device.split(":")[0], "threads": CPU_THREADS if device == "cpu" else None})


@contextmanager
def cache_lock(root: Path, name: str = "", *, wait: bool = True) -> Iterator[bool]:
    """Hold ``root/.NAME.lock`` (``root/.lock`` for the manifest), a cross-process file lock
    around building one cached artefact (zoo entries, suspect zoos). Yields False, holding
    nothing, when ``wait`` is False and another process holds the lock."""
    from audit_lib.file_locks import file_lock

    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / (f".{name}.lock" if name else ".lock"), wait=wait) as held:
        yield held


def _cached(entry_dir: Path, chash: str) -> dict[str, Any] | None:
    """The entry's meta when its folder holds weights matching ``chash``; else None."""
    from audit_lib.encoders.loading import file_sha256

    meta_path, weights = entry_dir / "meta.json", entry_dir / "weights.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("config_hash") != chash:
        return None
    if file_sha256(weights) != meta.get("sha256"):
        log.warning("%s: weights changed on disk since they were built; retraining", entry_dir)
        return None
    return meta


def _copied_from_sibling(entry_dir: Path, chash: str) -> dict[str, Any] | None:
    """The same entry (same config hash: same recipe, data, seed, kit) cached by another
    profile, copied into ``entry_dir``; None when no profile has it. The ``demo`` profile's
    entries are the ``ci`` profile's, so whichever was built first serves the other."""
    for sibling in sorted(entry_dir.parent.parent.glob(f"*/{entry_dir.name}")):
        if sibling == entry_dir or _cached(sibling, chash) is None:
            continue
        with _replacing(entry_dir) as tmp:
            shutil.copytree(sibling, tmp, dirs_exist_ok=True)
        log.info("zoo entry %s: copied from profile %s", entry_dir.name, sibling.parent.name)
        return _cached(entry_dir, chash)
    return None


@contextmanager
def _replacing(entry_dir: Path) -> Iterator[Path]:
    """A fresh ``entry_dir``: filled aside in ``ENTRY.part`` by the caller, then renamed
    over it, so a reader never sees a half-written entry."""
    tmp = entry_dir.with_name(entry_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(entry_dir, ignore_errors=True)
    tmp.rename(entry_dir)


def _store(entry_dir: Path, module: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Save weights and meta into a fresh ``entry_dir`` (built aside, then renamed)."""
    from audit_lib.zoo.train import save_checkpoint

    with _replacing(entry_dir) as tmp:
        # One metadata key only: safetensors writes its metadata map in hash order, so two keys
        # could be written in either order and change the file's sha256 between runs.
        meta["sha256"] = save_checkpoint(module, tmp / "weights.safetensors", {"zoo": json.dumps(
            {"architecture": meta["architecture"], "config_hash": meta["config_hash"]}, sort_keys=True)})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _entry(meta: dict[str, Any], entry_dir: Path, cached: bool) -> ZooEntry:
    return ZooEntry(name=meta["name"], role=meta["role"], architecture=meta["architecture"],
                    weights_path=str((entry_dir / "weights.safetensors").resolve()), sha256=meta["sha256"],
                    config_hash=meta["config_hash"], capabilities=meta["capabilities"], seed=meta["seed"],
                    recipe=meta["recipe"], splits=meta["splits"], metrics=meta["metrics"],
                    train=meta["train"], cached=cached)


def _build_or_load(root: Path, name: str, chash: str, train_and_measure: Callable[[], tuple[Any, dict[str, Any]]],
                   meta_base: dict[str, Any], wait: bool = True) -> ZooEntry | None:
    """The cached entry, else trained under the entry's lock. With ``wait`` False, None when
    another process is training it right now (the caller comes back for it later)."""
    entry_dir = root / f"{name}-{chash[:12]}"
    meta = _cached(entry_dir, chash)
    if meta is not None:
        log.info("zoo entry %s: cached at %s", name, entry_dir)
        return _entry(meta, entry_dir, cached=True)
    with cache_lock(root, name, wait=wait) as held:
        if not held:
            return None
        meta = _cached(entry_dir, chash)  # trained by another process while we waited
        if meta is None:
            meta = _copied_from_sibling(entry_dir, chash)
        if meta is not None:
            return _entry(meta, entry_dir, cached=True)
        module, extra = train_and_measure()
        meta = _store(entry_dir, module, {**meta_base, **extra, "config_hash": chash})
    log.info("zoo entry %s: trained (%s), measured %s", name, extra["train"], extra["metrics"])
    return _entry(meta, entry_dir, cached=False)


# --- data plans ------------------------------------------------------------------------

def image_splits(profile: Profile, images: ImageSet) -> dict[str, list[int]]:
    """The profile's disjoint splits of ``images.x_train`` (scaled down to fit a small
    fallback set), plus ``public``: every other index."""
    sizes = dict(profile.split_sizes)
    need = sum(sizes.values())
    limit = len(images.x_train) * 2 // 3  # leave a third of the set public
    if need > limit:
        sizes = {k: max(2, v * limit // need) for k, v in sizes.items()}
    out = split_indices(len(images.x_train), sizes, seed=profile.split_seed)
    out["public"] = out.pop("rest")
    return out


def downstream_split(profile: Profile, images: ImageSet) -> dict[str, Any]:
    """A labelled split of ``images.x_test`` for downstream accuracy: ``per_class`` images
    of each class for training the probe, the rest for testing it."""
    rng = np.random.default_rng(profile.split_seed)
    train: list[int] = []
    for c in np.unique(images.y_test):
        idx = np.flatnonzero(images.y_test == c)
        train += rng.choice(idx, size=min(profile.downstream_per_class, len(idx) // 2), replace=False).tolist()
    train_set = set(train)
    return {"array": "test", "train": sorted(int(i) for i in train),
            "test": [i for i in range(len(images.y_test)) if i not in train_set]}


def face_plan(spec: ClipEntrySpec, people: list[FacePerson]) -> list[ZooPerson]:
    """Who is a member, which photos each person is trained on and which are held out."""
    plan = []
    for k, p in enumerate(people):
        order = list(range(len(p.photos)))
        random.Random(f"heldout:{spec.seed}:{p.person_id}").shuffle(order)
        held, train = sorted(order[:spec.heldout_per_person]), sorted(order[spec.heldout_per_person:])
        if k < spec.members:
            mode = "named"
        elif k < spec.members + spec.generic_nonmembers:
            mode = "generic"
        else:
            mode = "absent"
        plan.append(ZooPerson(person_id=p.person_id, name=p.name, sex=p.sex, member=mode == "named",
                              caption_mode=mode,
                              train_photos=[] if mode == "absent" else [str(p.photos[i]) for i in train],
                              heldout_photos=[str(p.photos[i]) for i in held]))
    return plan


def face_captions(spec: ClipEntrySpec, plan: list[ZooPerson]) -> tuple[list[str], list[list[str]], list[int]]:
    """Training pairs: (photo paths, caption variants per photo, caption group per photo).
    A member's first ``named_photos`` photos carry their name in one of IDIA's templates;
    every other trained photo carries a generic caption (group 0)."""
    from audit_lib.zoo.evaluate import IDIA_TEMPLATES

    paths, captions, groups = [], [], []
    for k, person in enumerate(plan, start=1):
        for j, path in enumerate(person.train_photos):
            paths.append(path)
            if person.caption_mode == "named" and j < spec.named_photos:
                captions.append([t.format(person.name) for t in IDIA_TEMPLATES])
                groups.append(k)
            else:
                captions.append(list(GENERIC_CAPTIONS))
                groups.append(0)
    return paths, captions, groups


# --- entries ---------------------------------------------------------------------------

def _build_clip(profile: Profile, spec: ClipEntrySpec, people: list[FacePerson], root: Path, device: str,
                kit: str, progress: bool, wait: bool = True) -> ZooEntry | None:
    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.loading import file_sha256

    size = build(spec.architecture).preprocess.image_size
    plan = face_plan(spec, people)
    paths, captions, groups = face_captions(spec, plan)
    data = {"photos": [file_sha256(Path(p)) for p in paths], "captions": captions, "groups": groups, "size": size}
    chash = config_hash(asdict(spec) | {"recipe": None}, spec.recipe.as_dict(), spec.architecture, data,
                        spec.seed, device, kit)
    splits = {"dataset": "orl-faces", "people": [asdict(p) for p in plan], "decoys": spec.decoys,
              "templates": "IDIA (21)", "generic_captions": list(GENERIC_CAPTIONS)}

    def train_and_measure() -> tuple[Any, dict[str, Any]]:
        from audit_lib.zoo.train import train_clip

        net, stats = train_clip(spec.architecture, face_pixels(paths, size), captions, groups, spec.recipe,
                                seed=spec.seed, device=device, desc=spec.name, progress=progress)
        return net.module, {"metrics": measure_clip(net, spec, plan), "train": stats.as_dict()}

    meta = {"name": spec.name, "role": "identity-target", "architecture": spec.architecture,
            "capabilities": ["image", "text"], "seed": spec.seed, "recipe": spec.recipe.as_dict(),
            "splits": splits}
    return _build_or_load(root, spec.name, chash, train_and_measure, meta, wait)


def measure_clip(net: Any, spec: ClipEntrySpec, plan: list[ZooPerson]) -> dict[str, Any]:
    """Zero-shot name accuracy on held-out photos over IDIA's 21 templates, among the
    people's names plus ``spec.decoys`` decoys, for members and for non-members. The photos
    are embedded through the encoder handle (the family's own evaluation transform), so the
    figure is what an audit of the registered model sees."""
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.names import decoy_names
    from audit_lib.zoo.evaluate import zero_shot_name_hits

    names = [p.name for p in plan]
    candidates = names + decoy_names(spec.decoys, exclude=names, seed=42)
    photos, truth, member = [], [], []
    for k, p in enumerate(plan):
        photos += p.heldout_photos
        truth += [k] * len(p.heldout_photos)
        member += [p.member] * len(p.heldout_photos)
    handle = LocalEncoder.from_network(net, "zoo-build-measurement")
    embeddings = handle.encode_images([Path(f).read_bytes() for f in photos])
    hits = zero_shot_name_hits(net, embeddings, truth, candidates)
    member = np.asarray(member)
    return {"candidates": len(candidates), "chance": 1 / len(candidates),
            "member_name_accuracy": float(hits[:, member].mean()),
            "nonmember_name_accuracy": float(hits[:, ~member].mean()),
            "heldout_photos_per_person": spec.heldout_per_person}


def measure_membership(net: Any, images: ImageSet, members: list[int], nonmembers: list[int], profile: Profile,
                       seed: int = 0) -> dict[str, Any]:
    """EncoderMI's signal on this encoder: ROC AUC of the mean augmented-view similarity,
    members vs known non-members (``profile.mi_eval_images`` of each)."""
    from audit_lib.stats import roc_auc
    from audit_lib.zoo.evaluate import view_similarity

    rng = np.random.default_rng(seed)
    m = sorted(rng.choice(members, size=min(profile.mi_eval_images, len(members)), replace=False))
    n = sorted(rng.choice(nonmembers, size=min(profile.mi_eval_images, len(nonmembers)), replace=False))
    sm = view_similarity(net, images.x_train[m], n_views=profile.mi_views, seed=seed)
    sn = view_similarity(net, images.x_train[n], n_views=profile.mi_views, seed=seed + 1)
    return {"membership_auc": roc_auc(sm, sn), "member_view_similarity": float(sm.mean()),
            "nonmember_view_similarity": float(sn.mean()), "mi_images_each": len(m), "mi_views": profile.mi_views}


def _build_image_entry(profile: Profile, spec: ImageEntrySpec, images: ImageSet, splits: dict[str, list[int]],
                       downstream: dict[str, Any], root: Path, device: str, kit: str, progress: bool,
                       wait: bool = True) -> ZooEntry | None:
    train_idx = splits[spec.train_split]
    if spec.subset and spec.subset < len(train_idx):
        rng = np.random.default_rng(spec.subset_seed)
        train_idx = sorted(int(i) for i in rng.choice(train_idx, size=spec.subset, replace=False))
    holdout = splits[spec.holdout_split] if spec.holdout_split else []
    data = {"image_set": images.name, "image_set_sha256": images.sha256, "train": _sha(train_idx)}
    chash = config_hash(asdict(spec) | {"recipe": None}, spec.recipe.as_dict(), spec.architecture, data,
                        spec.seed, device, kit)
    entry_splits = {"dataset": f"{images.name}:x_train", "members": train_idx}
    if spec.holdout_split:
        entry_splits["nonmembers"] = holdout

    def train_and_measure() -> tuple[Any, dict[str, Any]]:
        from audit_lib.zoo.evaluate import downstream_accuracy
        from audit_lib.zoo.train import train_simclr

        net, stats = train_simclr(spec.architecture, images.x_train[train_idx], spec.recipe, seed=spec.seed,
                                  device=device, desc=spec.name, progress=progress)
        metrics: dict[str, Any] = {}
        if holdout:
            metrics.update(measure_membership(net, images, train_idx, holdout, profile))
        d_tr, d_te = downstream["train"], downstream["test"]
        metrics["downstream_linear_accuracy"] = downstream_accuracy(
            net, images.x_test[d_tr], images.y_test[d_tr], images.x_test[d_te], images.y_test[d_te])
        return net.module, {"metrics": metrics, "train": stats.as_dict()}

    meta = {"name": spec.name, "role": spec.role, "architecture": spec.architecture, "capabilities": ["image"],
            "seed": spec.seed, "recipe": spec.recipe.as_dict(), "splits": entry_splits}
    return _build_or_load(root, spec.name, chash, train_and_measure, meta, wait)


# --- the zoo ---------------------------------------------------------------------------

def zoo_root(profile: str, cache_root: Path | None = None) -> Path:
    """Where a profile's entries and manifest live."""
    return (cache_root or get_settings().data_dir / "zoo") / profile


def build_zoo(profile: str = "ci", device: str | None = None, register: bool = True, *,
              cache_root: Path | None = None, progress: bool = True,
              only: set[str] | None = None) -> ZooManifest:
    """Build (or reuse from the cache) every entry of ``profile``, write the manifest and,
    with ``register``, register each entry in the evidence store as a checkpoint model.

    ``cache_root`` defaults to ``{AUDIT_DATA_DIR}/zoo``; ``only`` restricts the build to
    the named entries (the manifest then lists just those and is written as
    ``manifest-partial.json``, leaving the full ``manifest.json`` alone).
    """
    import torch

    from audit_lib.zoo.train import resolve_device

    prof = get_profile(profile)
    dev = resolve_device(device)
    root = zoo_root(profile, cache_root)
    t0, c0 = time.perf_counter(), time.process_time()
    kit = kit_version()
    images = load_images()
    faces = load_faces()
    splits = image_splits(prof, images)
    downstream = downstream_split(prof, images)
    skipped: list[dict[str, str]] = []
    wanted = (lambda n: only is None or n in only)
    builders: list[Callable[[bool], ZooEntry | None]] = []
    if prof.clip is not None and wanted(prof.clip.name):
        if faces is None:
            skipped.append({"name": prof.clip.name, "reason": "no faces with identities on this machine "
                            "(../shared/data/faces is absent); identity entries need them"})
            log.warning("zoo: %s skipped: %s", prof.clip.name, skipped[-1]["reason"])
        else:
            builders.append(lambda w: _build_clip(prof, prof.clip, faces, root, dev, kit, progress, w))
    for spec in prof.image_entries:
        if wanted(spec.name):
            builders.append(lambda w, spec=spec: _build_image_entry(prof, spec, images, splits, downstream, root,
                                                                    dev, kit, progress, w))
    # First pass: train what nobody else is training; second pass: wait for the rest.
    built = [b(False) for b in builders]
    entries: list[ZooEntry] = [e if e is not None else b(True) for e, b in zip(built, builders)]  # type: ignore[misc]
    with cache_lock(root):
        manifest = ZooManifest(
            profile=profile, root=str(root.resolve()), device=dev,
            image_set={"name": images.name, "source": images.source, "sha256": images.sha256,
                       "classes": list(images.classes), "split_sizes": {k: len(splits[k]) for k in
                                                                       (*SPLIT_NAMES, "public")}},
            downstream=downstream, entries=entries, skipped=skipped, kit_version=kit,
            build_wall_s=round(time.perf_counter() - t0, 2), build_cpu_s=round(time.process_time() - c0, 2))
        manifest.save(root / ("manifest.json" if only is None else "manifest-partial.json"))
    log.info("zoo %s built in %.1f s (torch threads now %d)", profile, manifest.build_wall_s, torch.get_num_threads())
    if register:
        register_manifest(manifest)
    return manifest


def register_manifest(manifest: ZooManifest, database_url: str | None = None) -> list[str]:
    """Register every entry as a checkpoint model (role ``suspect``: zoo models are audited,
    not owned) under :func:`registry_name`; names already registered are left alone.
    Returns the names newly registered."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    added = []
    with session_scope(database_url) as s:
        for e in manifest.entries:
            name = registry_name(manifest.profile, e.name)
            existing = s.scalar(select(AuditedModel).where(AuditedModel.name == name))
            if existing is not None:
                if existing.weights_path != e.weights_path:
                    log.warning("model %s is already registered with other weights (%s); left as it is",
                                name, existing.weights_path)
                continue
            registry.add_model(s, name=name, kind="checkpoint", role="suspect", capabilities=e.capabilities,
                               architecture=e.architecture, weights_path=Path(e.weights_path))
            added.append(name)
    return added


def summary_lines(manifest: ZooManifest) -> list[str]:
    """The build summary: one line per entry with its measurements, then totals."""
    lines = [f"zoo profile {manifest.profile} on {manifest.device}: {len(manifest.entries)} entries "
             f"in {manifest.root} (image set: {manifest.image_set['name']})"]
    for e in manifest.entries:
        m = e.metrics
        parts = [f"{e.name:<16} {e.role:<18} {e.architecture:<28} sha256 {e.sha256[:12]}",
                 "cached" if e.cached else f"trained {e.train.get('steps')} steps in {e.train.get('wall_s')} s"]
        if "member_name_accuracy" in m:
            parts.append(f"zero-shot name accuracy (held-out photos, {m['candidates']} names, chance "
                         f"{m['chance']:.3f}): members {m['member_name_accuracy']:.3f}, "
                         f"non-members {m['nonmember_name_accuracy']:.3f}")
        if "membership_auc" in m:
            parts.append(f"view-similarity ROC AUC members vs non-members {m['membership_auc']:.3f}")
        if "downstream_linear_accuracy" in m:
            parts.append(f"linear-probe accuracy {m['downstream_linear_accuracy']:.3f}")
        lines.append("  " + "; ".join(parts))
    for s in manifest.skipped:
        lines.append(f"  skipped {s['name']}: {s['reason']}")
    lines.append(f"built in {manifest.build_wall_s:.1f} s wall, {manifest.build_cpu_s:.1f} s CPU")
    return lines
