"""The suspect zoo for fingerprinting an owned encoder (MetaV).

MetaV (Pan et al., KDD 2022, arXiv 2201.07391) learns what "a copy of our model" looks like
from examples. Positives are the owned model and derivatives an infringer could make;
negatives are encoders trained independently of it:

- positives: fine-tuned with the SimCLR contrastive loss at several learning rates and
  epochs; magnitude-pruned at several sparsities; weight-quantised (int8 per output
  channel, fp16); distilled (a fresh student matched to the owned embeddings with
  white-box access); stolen through the API (StolenEncoder, Liu et al., CCS 2022,
  arXiv 2201.05889: only query answers, at several budgets; ``audit_lib.methods.theft``
  when it is available, else the minimal loop here);
- negatives: the zoo's independent encoders (other seeds, data, architectures) with the
  same embedding size, plus their own pruned / quantised / fine-tuned variants (a copy of
  someone else's model is still independent of ours, and it teaches the verifier that
  "modified" does not mean "ours"), plus randomly initialised networks (train split only),
  plus ``extra_independents`` families the builder trains itself from scratch (SimCLR on
  the zoo's images, the owned architecture, new seeds): the verifier generalises to a new
  family only when it has seen several, and the held-out null is only as large as its
  number of families.

Split by model into train / val / test. Negatives are split by *family* (an independent
encoder and all its variants land in the same split), which is stricter than by model:
no held-out negative is a near-duplicate of a training negative. Positives are split by
kind, round-robin (train, test, val), so every kind with two or more models has one
held out. The zoo is cached under ``cache_dir/<config hash>/`` as safetensors files and a
JSON manifest (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit_lib.embedding import embed_images

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from audit_lib.encoders.architectures import Network
    from audit_lib.methods.fingerprint import ZooEntry

log = logging.getLogger(__name__)

ZOO_VERSION = "suspect-zoo-2"
SPLIT_CYCLE = ("train", "test", "val")
FIDELITY_IMAGES = 128  # the infringer half's last images: no derivation trains on them


@dataclass(frozen=True)
class SuspectZooConfig:
    """How the suspect zoo is built; every field goes into the cache key."""

    finetune: tuple[tuple[float, int], ...] = ((3e-4, 1), (1e-3, 2), (3e-3, 2))  # (Adam lr, epochs) of SimCLR fine-tunes
    finetune_images: int = 256  # images per fine-tuning epoch
    prune: tuple[float, ...] = (0.3, 0.5, 0.7)  # global magnitude-pruning sparsities
    quantise: tuple[str, ...] = ("int8", "fp16")  # weight quantisation schemes
    distil_epochs: tuple[int, ...] = (20, 50)  # one distilled student per entry (white-box teacher)
    distil_images: int = 384  # images the students see
    steal_budgets: tuple[int, ...] = (128, 256, 512)  # StolenEncoder query budgets (one stolen copy each)
    steal_epochs: int = 50  # epochs over the stolen answers
    steal_lambda: float = 20.0  # StolenEncoder lambda (paper: 20), k = 1 augmented view
    steal_lr: float = 0.05  # SGD lr (paper: 1e-3 for 100 epochs; 0.05 gives a working copy in 40-50 epochs)
    negative_prune: tuple[float, ...] = (0.5,)  # variants of each independent encoder
    negative_quantise: tuple[str, ...] = ("int8",)
    negative_finetune: tuple[tuple[float, int], ...] = ((1e-3, 1),)
    random_negatives: int = 2  # randomly initialised networks (train split only)
    extra_independents: int = 0  # independent families the builder trains itself (SimCLR from scratch)
    extra_epochs: int = 3  # their SimCLR epochs (the ci zoo's independents' recipe)
    extra_images: int = 768  # their training images: a random subset of the zoo's images per family
    batch_size: int = 64  # all training loops
    seed: int = 0
    num_threads: int = 1  # torch CPU threads while building (1: several threads crawl on busy shared cores)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_fits(self, n_images: int) -> None:
        """The infringer's half of ``n_images`` must leave ``FIDELITY_IMAGES`` images that no
        derivation trains on (the fidelity probe), and the thief's half must cover the budgets."""
        half = n_images // 2
        used = max(self.finetune_images, self.distil_images)
        if used > half - FIDELITY_IMAGES:
            raise ValueError(f"suspect zoo: fine-tuning / distillation use {used} of the {half} infringer images; "
                             f"at most {half - FIDELITY_IMAGES} leave the {FIDELITY_IMAGES}-image fidelity probe unseen")
        if self.steal_budgets and max(self.steal_budgets) > n_images - half:
            raise ValueError(f"steal budget {max(self.steal_budgets)} exceeds the {n_images - half} surrogate images")


@dataclass(frozen=True)
class IndependentModel:
    """An independently trained encoder of the reference zoo (a negative's family)."""

    name: str
    architecture: str
    weights_path: Path


@dataclass
class ZooRecord:
    """One model of the suspect zoo, as listed in the manifest."""

    name: str
    label: int  # 1 pirated, 0 independent
    kind: str  # finetune, prune, quantise, distil, stolen, independent, random
    family: str  # "owned" or the independent encoder it derives from
    split: str  # train | val | test
    architecture: str
    weights: str  # file name inside the zoo folder
    params: dict[str, Any] = field(default_factory=dict)
    fidelity: float | None = None  # mean cosine with the owned model's embeddings on the unseen probe images


@dataclass
class SuspectZoo:
    """A built zoo: its folder and manifest; networks are loaded on demand."""

    root: Path
    manifest: dict[str, Any]

    @property
    def records(self) -> list[ZooRecord]:
        return [ZooRecord(**r) for r in self.manifest["models"]]

    def owned_network(self) -> Network:
        return _load(self.manifest["owned"]["architecture"], Path(self.manifest["owned"]["weights_path"]))

    def entries(self) -> list[ZooEntry]:
        """Every zoo model as a :class:`~audit_lib.methods.fingerprint.ZooEntry`."""
        from audit_lib.encoders.loading import file_sha256
        from audit_lib.methods.fingerprint import ZooEntry

        out = []
        for r in self.records:
            path = self.root / r.weights
            expected = self.manifest.get("weights_sha256", {}).get(r.name)
            if expected is None or file_sha256(path) != expected:
                raise ValueError(f"suspect zoo {self.root.name}: {r.weights} does not match its manifest hash; "
                                 "delete the folder to rebuild it")
            out.append(ZooEntry(r.name, _load(r.architecture, path), r.label, r.split, r.kind, r.family))
        return out

    def weights_path(self, name: str) -> Path:
        rec = next((r for r in self.records if r.name == name), None)
        if rec is None:
            raise KeyError(f"suspect zoo: no model named {name!r}")
        return self.root / rec.weights

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {"positives": n, "negatives": n}}."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            d = out.setdefault(r.split, {"positives": 0, "negatives": 0})
            d["positives" if r.label else "negatives"] += 1
        return out


# --------------------------------------------------------------------------- weights I/O

def _load(architecture: str, path: Path) -> Network:
    from audit_lib.encoders.architectures import build
    from audit_lib.encoders.loading import load_into, read_state_dict

    net = build(architecture)
    load_into(net.module, read_state_dict(path), str(path))
    net.module.eval()
    return net


def _save(network: Network, path: Path) -> str:
    from audit_lib.encoders.loading import save_weights

    return save_weights(network.module, path)


def _clone(network: Network, architecture: str) -> Network:
    from audit_lib.encoders.architectures import build

    net = build(architecture)
    net.module.load_state_dict(network.module.state_dict())
    net.module.eval()
    return net


def fidelity(owned_embeddings: np.ndarray, other: Network, images: np.ndarray) -> float:
    """Mean cosine between ``other``'s embeddings of ``images`` and the owned model's
    (``owned_embeddings``, of the same images): how much of the owned model a derivative
    kept (about 0 for an independent encoder, whose embedding basis is unrelated). The
    manifest lists it per model, so a "copy" that copied nothing is visible before it is
    used as a positive."""
    from audit_lib.methods.downstream import mean_cosine

    return mean_cosine(owned_embeddings, embed_images(other, images))


# --------------------------------------------------------------------------- derivations

def prune_global(network: Network, sparsity: float) -> Network:
    """Global unstructured magnitude pruning: the ``sparsity`` share of smallest-magnitude
    conv / linear weights (all layers together) set to zero."""
    import torch

    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity {sparsity}: expected 0 <= s < 1")
    weights = [p for n, p in network.module.named_parameters() if p.dim() > 1 and n.endswith("weight")]
    allw = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(sparsity * allw.numel())
    if k == 0:
        return network
    threshold = allw.kthvalue(k).values
    with torch.no_grad():
        for w in weights:
            w.mul_((w.abs() > threshold).to(w.dtype))
    return network


def quantise_weights(network: Network, scheme: str) -> Network:
    """Post-training weight quantisation, stored dequantised: ``int8`` (symmetric, per
    output channel, for conv / linear weights) or ``fp16`` (every floating tensor)."""
    import torch

    with torch.no_grad():
        if scheme == "fp16":
            for t in network.module.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
        elif scheme == "int8":
            for n, p in network.module.named_parameters():
                if p.dim() > 1 and n.endswith("weight"):
                    scale = p.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
                    shape = (-1,) + (1,) * (p.dim() - 1)
                    p.copy_(torch.round(p / scale.view(shape)).clamp(-127, 127) * scale.view(shape))
        else:
            raise ValueError(f"quantisation scheme {scheme!r}: expected int8 or fp16")
    return network


def _to_input(network: Network, x01: torch.Tensor) -> torch.Tensor:
    import torch

    pre = network.preprocess
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x01 - mean) / std


def _batches(images: np.ndarray, batch: int, rng: np.random.Generator) -> list[torch.Tensor]:
    import torch

    order = rng.permutation(images.shape[0])
    return [torch.from_numpy(images[order[i:i + batch]].astype(np.float32) / 255).permute(0, 3, 1, 2)
            for i in range(0, len(order) - batch + 1, batch)]


def finetune_simclr(network: Network, images: np.ndarray, *, lr: float, epochs: int, batch: int,
                    seed: int) -> Network:
    """Fine-tune an encoder with the SimCLR contrastive loss (the zoo's NT-Xent and batched
    SimCLR augmentation, temperature 0.2 as the zoo's recipes; Adam) on ``images``."""
    import torch

    from audit_lib.zoo.augment import BatchAugment
    from audit_lib.zoo.losses import nt_xent
    from audit_lib.zoo.recipes import AugmentConfig

    augment = BatchAugment(AugmentConfig())
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    module = network.module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(epochs):
        for x in _batches(images, batch, rng):
            loss = nt_xent(network.encode_image(_to_input(network, augment(x, gen))),
                           network.encode_image(_to_input(network, augment(x, gen))), temperature=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    module.eval()
    return network


def _match(student: Network, images: np.ndarray, targets: np.ndarray, *, epochs: int, batch: int,
           lr: float, seed: int) -> Network:
    """Distillation: train ``student`` so its unit embeddings match ``targets`` (unit, one
    per image) in Euclidean distance (StolenEncoder's loss with lambda = 0)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    module = student.module.train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    t_all = torch.from_numpy(targets.astype(np.float32))
    n = images.shape[0]
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n - 1, batch):
            idx = order[i:i + batch]
            x = torch.from_numpy(images[idx].astype(np.float32) / 255).permute(0, 3, 1, 2)
            s = F.normalize(student.encode_image(_to_input(student, x)), dim=1)
            loss = (s - t_all[idx]).norm(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    module.eval()
    return student


def distil(teacher: Network, architecture: str, images: np.ndarray, *, epochs: int, batch: int,
           seed: int) -> Network:
    """A fresh student of ``architecture`` distilled from the teacher's embeddings (white-box
    teacher, no augmentation term)."""
    import torch

    from audit_lib.encoders.architectures import build
    from audit_lib.embedding import l2_normalise

    t = l2_normalise(embed_images(teacher, images))
    torch.manual_seed(seed)
    return _match(build(architecture), images, t, epochs=epochs, batch=batch, lr=1e-3, seed=seed)


def steal(owned: Network, architecture: str, images: np.ndarray, *, budget: int, epochs: int, batch: int,
          lam: float, lr: float, seed: int) -> Network:
    """A stolen copy through the owned model's handle (``audit_lib.methods.theft``): the
    first ``budget`` surrogate images sent once each as PNG, a fresh ``architecture``
    network trained on the answers with the StolenEncoder loss (k = 1, SGD momentum 0.9)."""
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.methods.theft import StealRecipe, steal_encoder

    if budget > images.shape[0]:
        raise ValueError(f"steal budget {budget} exceeds the {images.shape[0]} surrogate images")
    handle = LocalEncoder.from_network(owned, "owned", device="cpu")
    try:
        recipe = StealRecipe(architecture=architecture, lam=lam, k=1, lr=lr, epochs=epochs, batch_size=batch,
                             seed=seed)
        return steal_encoder(handle, images[:budget], recipe, progress=False).network
    finally:
        handle.close()


def train_independent(architecture: str, images: np.ndarray, config: SuspectZooConfig, seed: int) -> Network:
    """An encoder trained independently of the owned one: SimCLR from a fresh seeded
    initialisation on a seeded random subset of ``images`` (the ci zoo's independents'
    recipe, ``config.extra_epochs`` epochs)."""
    from dataclasses import replace

    from audit_lib.zoo.profiles import CI_INDEPENDENT_RECIPE
    from audit_lib.zoo.train import train_simclr

    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(images.shape[0], size=min(config.extra_images, images.shape[0]), replace=False))
    recipe = replace(CI_INDEPENDENT_RECIPE, epochs=config.extra_epochs)
    net, _ = train_simclr(architecture, images[subset], recipe, seed=seed, desc=f"independent {seed}", progress=False)
    return net


# --------------------------------------------------------------------------- the builder

def config_hash(owned_architecture: str, owned_sha256: str, independents: Sequence[tuple[str, str, str]],
                config: SuspectZooConfig, data_sha256: str) -> str:
    """The cache key: zoo version, owned weights, independents' weights, config, data."""
    blob = json.dumps({"v": ZOO_VERSION, "owned": [owned_architecture, owned_sha256],
                       "independents": sorted(independents), "config": config.as_dict(),
                       "data": data_sha256}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _round_robin(items: Sequence[Any]) -> list[str]:
    return [SPLIT_CYCLE[i % len(SPLIT_CYCLE)] for i in range(len(items))]


def build_suspect_zoo(owned_architecture: str, owned_weights: Path, independents: Sequence[IndependentModel],
                      images: np.ndarray, cache_dir: Path, config: SuspectZooConfig = SuspectZooConfig()) -> SuspectZoo:
    """Build (or load from ``cache_dir``) the suspect zoo of an owned encoder.

    ``images``: real uint8 (M, H, W, 3) images at the owned model's input size; the first
    half feeds fine-tuning and distillation (the infringer's data), the second half is the
    thief's surrogate set. Independent encoders with another embedding size are skipped
    (the verifier reads a fixed N x d), and the manifest says so."""
    from audit_lib.encoders.loading import file_sha256

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 (M, H, W, 3), got {images.dtype} {images.shape}")
    owned_weights = Path(owned_weights)
    owned_sha = file_sha256(owned_weights)
    ind_keys = [(m.name, m.architecture, file_sha256(Path(m.weights_path))) for m in independents]
    key = config_hash(owned_architecture, owned_sha, ind_keys, config,
                      hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest())
    root = Path(cache_dir) / key
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        log.info("suspect zoo %s: cached", key)
        return SuspectZoo(root, json.loads(manifest_path.read_text()))
    from audit_lib.embedding import torch_threads
    from audit_lib.zoo.build import cache_lock

    config.check_fits(images.shape[0])
    for m in independents:  # a checkpoint that does not fit fails now, not after the positives' training
        _load(m.architecture, Path(m.weights_path))
    # One builder per key across processes (two enrolments, two test workers): they would share
    # the ``.partial`` folder, and the first to finish would rename it away under the other.
    with cache_lock(Path(cache_dir), key):
        if manifest_path.is_file():
            log.info("suspect zoo %s: built by another process meanwhile", key)
            return SuspectZoo(root, json.loads(manifest_path.read_text()))
        with torch_threads(config.num_threads):
            return _build(owned_architecture, owned_weights, owned_sha, independents, ind_keys, images, root, key,
                          config)


def _build(owned_architecture: str, owned_weights: Path, owned_sha: str, independents: Sequence[IndependentModel],
           ind_keys: list[tuple[str, str, str]], images: np.ndarray, root: Path, key: str,
           config: SuspectZooConfig) -> SuspectZoo:
    """Train and save every zoo model into ``root`` (through a ``.partial`` folder)."""
    import torch
    from tqdm import tqdm

    from audit_lib.encoders.loading import file_sha256

    tmp = root.with_name(root.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)

    half = images.shape[0] // 2
    infringer_data, surrogate = images[:half], images[half:]
    probe = infringer_data[-FIDELITY_IMAGES:]
    owned = _load(owned_architecture, owned_weights)
    owned_probe = embed_images(owned, probe)  # once: every model's fidelity is measured against it
    dim = owned.embed_dim
    records: list[ZooRecord] = []
    skipped: list[str] = []
    seed = config.seed

    jobs: list[tuple[str, str, dict[str, Any], Any]] = []  # (kind, name, params, make)
    for i, (lr, ep) in enumerate(config.finetune):
        jobs.append(("finetune", f"finetune-lr{lr:g}-ep{ep}", {"lr": lr, "epochs": ep},
                     lambda lr=lr, ep=ep, i=i: finetune_simclr(
                         _clone(owned, owned_architecture), infringer_data[:config.finetune_images],
                         lr=lr, epochs=ep, batch=config.batch_size, seed=seed + 10 + i)))
    for s in config.prune:
        jobs.append(("prune", f"prune-{s:g}", {"sparsity": s},
                     lambda s=s: prune_global(_clone(owned, owned_architecture), s)))
    for q in config.quantise:
        jobs.append(("quantise", f"quantise-{q}", {"scheme": q},
                     lambda q=q: quantise_weights(_clone(owned, owned_architecture), q)))
    for i, ep in enumerate(config.distil_epochs):
        jobs.append(("distil", f"distil-ep{ep}", {"epochs": ep, "images": config.distil_images},
                     lambda ep=ep, i=i: distil(owned, owned_architecture, infringer_data[:config.distil_images],
                                               epochs=ep, batch=config.batch_size, seed=seed + 20 + i)))
    for i, budget in enumerate(config.steal_budgets):
        jobs.append(("stolen", f"stolen-q{budget}", {"budget": budget, "epochs": config.steal_epochs,
                                                     "lambda": config.steal_lambda, "queries": budget},
                     lambda b=budget, i=i: steal(owned, owned_architecture, surrogate, budget=b,
                                                 epochs=config.steal_epochs, batch=config.batch_size,
                                                 lam=config.steal_lambda, lr=config.steal_lr, seed=seed + 30 + i)))
    # positives: split round-robin within each kind
    by_kind: dict[str, list[int]] = {}
    for j, (kind, *_rest) in enumerate(jobs):
        by_kind.setdefault(kind, []).append(j)
    pos_split = {}
    for idxs in by_kind.values():
        for j, split in zip(idxs, _round_robin(idxs)):
            pos_split[j] = split

    from audit_lib.encoders.architectures import build

    # negative families: (name, architecture, how to get the base network, its params)
    families: list[tuple[str, str, Any, dict[str, Any]]] = []
    for m in independents:
        if build(m.architecture).embed_dim != dim:
            skipped.append(f"{m.name}: embedding size differs from the owned model's {dim}")
        else:
            families.append((m.name, m.architecture, lambda m=m: _load(m.architecture, Path(m.weights_path)), {}))
    for i in range(config.extra_independents):
        fseed = seed + 500 + i
        families.append((f"extra-{i:02d}", owned_architecture,
                         lambda fseed=fseed: train_independent(owned_architecture, images, config, fseed),
                         {"trained_by": "suspect zoo", "epochs": config.extra_epochs, "seed": fseed,
                          "images": min(config.extra_images, images.shape[0])}))
    fam_split = dict(zip([f[0] for f in families], _round_robin(families)))

    total = len(jobs) + len(families) * (1 + len(config.negative_prune) + len(config.negative_quantise)
                                         + len(config.negative_finetune)) + config.random_negatives
    bar = tqdm(total=total, desc="suspect zoo", unit="model", leave=False)

    def keep(net: Network, rec: ZooRecord) -> None:
        _save(net, tmp / rec.weights)
        rec.fidelity = round(fidelity(owned_probe, net, probe), 4)
        records.append(rec)
        bar.update(1)
        if rec.label == 1:
            log.info("suspect zoo: %s (%s split) fidelity %.3f", rec.name, rec.split, rec.fidelity)

    owned_fam = "owned"
    for j, (kind, name, params, make) in enumerate(jobs):
        torch.manual_seed(seed + j)
        keep(make(), ZooRecord(name, 1, kind, owned_fam, pos_split[j], owned_architecture,
                               f"{name}.safetensors", params))
    for k, (fam, arch, get_base, base_params) in enumerate(families):
        base = get_base()
        split = fam_split[fam]
        variants: list[tuple[str, str, dict[str, Any], Any]] = [("independent", fam, base_params, lambda b=base: b)]
        for s in config.negative_prune:
            variants.append(("independent-prune", f"{fam}-prune-{s:g}", {"sparsity": s},
                             lambda s=s, arch=arch, b=base: prune_global(_clone(b, arch), s)))
        for q in config.negative_quantise:
            variants.append(("independent-quantise", f"{fam}-quantise-{q}", {"scheme": q},
                             lambda q=q, arch=arch, b=base: quantise_weights(_clone(b, arch), q)))
        for i, (lr, ep) in enumerate(config.negative_finetune):
            variants.append(("independent-finetune", f"{fam}-finetune-lr{lr:g}-ep{ep}", {"lr": lr, "epochs": ep},
                             lambda lr=lr, ep=ep, i=i, arch=arch, b=base: finetune_simclr(
                                 _clone(b, arch), infringer_data[:config.finetune_images], lr=lr,
                                 epochs=ep, batch=config.batch_size, seed=seed + 100 + 10 * k + i)))
        for kind, name, params, make in variants:
            keep(make(), ZooRecord(f"neg:{name}", 0, kind, fam, split, arch, f"neg-{name}.safetensors", params))

    for i in range(config.random_negatives):
        torch.manual_seed(seed + 1000 + i)
        keep(build(owned_architecture), ZooRecord(f"neg:random-{i}", 0, "random", f"random-{i}", "train",
                                                  owned_architecture, f"neg-random-{i}.safetensors",
                                                  {"seed": seed + 1000 + i}))
    bar.close()
    manifest = {
        "version": ZOO_VERSION, "key": key, "config": config.as_dict(),
        "owned": {"architecture": owned_architecture, "weights_path": str(owned_weights.resolve()),
                  "sha256": owned_sha},
        "independents": [{"name": n, "architecture": a, "sha256": h} for n, a, h in ind_keys],
        "skipped": skipped,
        "models": [asdict(r) for r in records],
        "weights_sha256": {r.name: file_sha256(tmp / r.weights) for r in records},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.rename(root)
    return SuspectZoo(root, manifest)


#: Named zoo sizes: ``ci`` is what the tests build on 2 CPU cores (cached); ``full`` is the
#: default of an enrolment.
PROFILES: dict[str, SuspectZooConfig] = {
    # Copies must copy: at 3 epochs over 256 answers a "stolen" network reached mean cosine
    # 0.29 with the owned embeddings (independent encoders: about 0), a failed theft, not a
    # positive. 40 epochs give 0.7-0.8; the distilled student 0.54 at 20 epochs. The zoo's 6
    # independents plus 3 trained here make 9 negative families, 3 of them held out.
    "ci": SuspectZooConfig(finetune=((3e-4, 1), (1e-3, 1), (3e-3, 1)), finetune_images=128,
                           distil_epochs=(20,), distil_images=256, steal_budgets=(128, 256), steal_epochs=40,
                           negative_finetune=((1e-3, 1),), random_negatives=2, extra_independents=3,
                           num_threads=2),
    "full": SuspectZooConfig(extra_independents=18),
    # An owner's own small encoder on 2 CPU cores (tests/test_owner_ownership.py): every kind
    # of derivative once or twice, three fine-tunes so train, test and validation each get
    # one; the negative families come from the independence null (audit_lib.ownership.null).
    "small": SuspectZooConfig(finetune=((3e-4, 1), (1e-3, 1), (3e-3, 1)), finetune_images=64, prune=(0.3, 0.5),
                              quantise=("int8", "fp16"), distil_epochs=(10,), distil_images=64,
                              steal_budgets=(128,), steal_epochs=20, negative_prune=(0.5,),
                              negative_quantise=("int8",), negative_finetune=(), random_negatives=1,
                              extra_independents=0, num_threads=2),
}


def get_profile(name: str) -> SuspectZooConfig:
    """The named suspect-zoo configuration; ValueError naming the known ones otherwise."""
    if name not in PROFILES:
        raise ValueError(f"suspect zoo profile {name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]
