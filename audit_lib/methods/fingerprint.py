"""Task-agnostic fingerprinting of encoders: MetaV with a calibrated decision.

Paper: Xudong Pan, Yifan Yan, Mi Zhang, Min Yang, "MetaV: A Meta-Verifier Approach to
Task-Agnostic Model Fingerprinting", KDD 2022, arXiv 2201.07391.

What is implemented (the paper's joint objective)::

    min_{X, V}  - sum_{f in {f_0} u M+} log V(f(X))  - sum_{g in M-} log(1 - V(g(X)))

``X = (x_1..x_N)`` are N learnable fingerprint inputs, initialised from real images and
parametrised as ``x = (tanh(w) + 1) / 2`` (the tanh squashing of the paper and of the
unofficial grasses/MetaV code) so pixels stay in [0, 1]; ``f(X)`` is the concatenation of a
model's embeddings on the N inputs; ``V`` is a small MLP (flatten N x d -> 128 -> 1, the
hidden width of grasses/MetaV) giving P(pirated). One Adam optimiser for X and one for V
(same learning rate, linearly decayed), a random input transformation every step (identity,
horizontal flip, Gaussian blur, Gaussian noise, small translation), the owned model in
every step's positives plus randomly drawn positives and negatives of the train split.

Where we depart from the paper, and why:

- Encoders, not classifiers: the outputs are embeddings, L2-normalised before V (a
  suspect may rescale its outputs; the direction is what a copy keeps).
- A verification sends the fingerprints as PNG files, so every pixel is quantised to
  uint8. Training quantises with a straight-through estimator every step and validation
  scores the exact PNG bytes, so V never relies on sub-quantum detail.
- The decision is not ``V >= 0.5``. H0: "the suspect was trained independently of the
  owned model". The suspect's score is ranked among the scores of held-out negative models
  that were never used for training or model selection: p = (1 + #{neg >= s}) / (K + 1)
  (``audit_lib.stats.empirical_p_value``). The smallest attainable p is 1 / (K + 1); when
  that exceeds alpha (fewer than 1 / alpha - 1 held-out negatives) we say so and decide
  on a parametric tail instead: a Student-t predictive p-value for a new draw from a
  normal fitted to the held-out negatives' logits. Both p-values are reported.
- Model selection: the verifier state with the best validation ARUC is kept (early
  stopping on the validation split, never on the test split).
- P(pirated) is calibrated: V's logit goes through a Platt scaling ``sigmoid(a * logit + b)``
  fitted on the validation split (L2-regularised logistic regression, classes weighted
  equally; never the test split). V is trained to saturate on its training models, so its
  raw sigmoid puts held-out independents near 0.5 however far below the copies they are;
  the scaling is monotone, so it changes no rank and, being affine in the logit, no
  decision (the p-value is computed on logits), only the probabilities that ARUC and the
  reports read.

Caveat, stated in every finding: the held-out negatives are a few independent encoders
plus their pruned / quantised / fine-tuned variants, so they are clustered by family and
the null is effectively smaller than its count (the finding names the number of families);
p-values are only as good as the claim that an independent suspect is exchangeable with them.

ARUC, pinned (``audit_lib.stats.aruc``): with scores s = the calibrated P(pirated) in
[0, 1], robustness(tau) = share
of positive suspects with s >= tau, uniqueness(tau) = share of negative suspects with
s < tau, ARUC = integral over tau in [0, 1] of min(robustness, uniqueness) by the trapezoid
rule on 1001 thresholds. 1.0 needs every positive at 1 and every negative at 0.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from audit_lib import stats
from audit_lib.embedding import embed_pngs, normalise_rows, torch_threads
from audit_lib.findings import FindingResult
from audit_lib.imaging import png_batch
from audit_lib.method_registry import MethodSpec, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from audit_lib.encoders.architectures import Network
    from audit_lib.encoders.base import EncoderHandle

log = logging.getLogger(__name__)

METHOD = "fingerprint"
METHOD_VERSION = "metav-2"
HYPOTHESIS = "H0: the suspect encoder was trained independently of the owned encoder"
TRANSFORMS = ("identity", "flip", "blur", "noise", "translate")


@dataclass(frozen=True)
class FingerprintConfig:
    """Settings for fingerprint + verifier training; defaults follow grasses/MetaV (CIFAR)
    where it has one, scaled to a 2-core CPU."""

    n_fingerprints: int = 32  # N inputs = queries per verification (grasses/MetaV: 70; we keep <= 100)
    steps: int = 200  # joint Adam steps over (X, V)
    lr: float = 0.01  # Adam learning rate for X and V (grasses/MetaV CIFAR: 0.01), linear decay
    hidden: int = 128  # verifier hidden width (grasses/MetaV: 128)
    pos_per_step: int = 3  # random train positives per step, besides the owned model
    neg_per_step: int = 3  # random train negatives per step (grasses/MetaV: 3)
    noise_std: float = 0.03  # Gaussian-noise transform, in [0, 1] pixel units
    max_shift: int = 2  # translation transform, pixels
    eval_every: int = 10  # steps between validation ARUC checks (model selection)
    patience: int = 5  # stop after this many checks without a better validation ARUC
    stop_aruc: float = 0.995  # stop once validation ARUC reaches this (scores saturated)
    seed: int = 0  # fingerprint initialisation, model sampling, transforms
    num_threads: int = 1  # torch CPU threads while training (1: several threads crawl on busy shared cores)

    def __post_init__(self) -> None:
        if not 1 <= self.n_fingerprints <= 100:
            raise ValueError(f"n_fingerprints = {self.n_fingerprints}: expected 1..100 (it is the query cost)")
        if self.steps < 1 or self.lr <= 0 or self.hidden < 1:
            raise ValueError(f"steps = {self.steps}, lr = {self.lr}, hidden = {self.hidden}: must be positive")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ZooEntry:
    """A model of the suspect zoo as the trainer sees it: a built network and its label."""

    name: str
    network: Network
    label: int  # 1 = pirated (the owned model or a derivative), 0 = independent
    split: str  # train | val | test
    kind: str = ""  # finetune, prune, quantise, distil, stolen, independent, ...
    family: str = ""  # the model it derives from ("owned" or an independent encoder)


# --------------------------------------------------------------------------- parametrisation

def to_param(images01: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The tanh parameter w with (tanh(w) + 1) / 2 == images (clipped away from 0 and 1)."""
    import torch

    return torch.atanh(images01.clamp(eps, 1 - eps) * 2 - 1)


def from_param(w: torch.Tensor) -> torch.Tensor:
    """Fingerprint pixels in [0, 1] from the tanh parameter (MetaV's squashing)."""
    import torch

    return (torch.tanh(w) + 1) / 2


def quantise_ste(x01: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid in the forward pass, identity gradient (straight-through)."""
    return x01 + (torch_round255(x01) - x01).detach()


def torch_round255(x01: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.round(x01.clamp(0, 1) * 255) / 255


def random_transform(x01: torch.Tensor, name: str, generator: torch.Generator, *, noise_std: float,
                     max_shift: int) -> torch.Tensor:
    """One of MetaV's robustness transforms, applied to every fingerprint image alike."""
    import torch
    import torch.nn.functional as F

    if name == "identity":
        return x01
    if name == "flip":
        return x01.flip(-1)
    if name == "blur":
        k = torch.tensor([1.0, 2.0, 1.0], device=x01.device)
        kernel = (k[:, None] * k[None, :]) / 16
        kernel = kernel.expand(x01.shape[1], 1, 3, 3)
        return F.conv2d(F.pad(x01, (1, 1, 1, 1), mode="replicate"), kernel, groups=x01.shape[1])
    if name == "noise":
        noise = torch.randn(x01.shape, generator=generator) * noise_std
        return (x01 + noise.to(x01.device)).clamp(0, 1)
    if name == "translate":
        dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
        pad = max_shift
        padded = F.pad(x01, (pad, pad, pad, pad), mode="replicate")
        h, w = x01.shape[-2:]
        return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    raise ValueError(f"transform {name!r}: expected one of {TRANSFORMS}")


# --------------------------------------------------------------------------- embeddings

def embed_differentiable(network: Network, x01: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings of [0, 1] images, differentiable in the images. Mirrors the
    handles' preprocessing for square inputs: resize to the model's size (bicubic), scale,
    normalise with the model's mean and std."""
    import torch
    import torch.nn.functional as F

    pre = network.preprocess
    if x01.shape[-1] != pre.image_size or x01.shape[-2] != pre.image_size:
        x01 = F.interpolate(x01, size=(pre.image_size, pre.image_size), mode="bicubic",
                            align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(pre.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    emb = network.encode_image((x01 - mean) / std)
    return F.normalize(emb.float(), dim=-1)


def make_verifier(n_fingerprints: int, dim: int, hidden: int) -> torch.nn.Module:
    """V: flattened (N x d) unit embeddings -> hidden (ReLU) -> one logit of P(pirated)."""
    import torch.nn as nn

    return nn.Sequential(nn.Flatten(), nn.Linear(n_fingerprints * dim, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def verifier_logit(verifier: torch.nn.Module, embeddings: np.ndarray) -> float:
    """V's logit for one model's (N, d) embeddings (normalised here)."""
    import torch

    x = torch.from_numpy(normalise_rows(embeddings).astype(np.float32))[None]
    with torch.inference_mode():
        return float(verifier(x).reshape(()))


def fit_platt(logits: Sequence[float], labels: Sequence[int], c: float = 1.0) -> tuple[float, float]:
    """Platt scaling (Platt 1999) of V's logits: (a, b) minimising the class-balanced logistic
    loss of ``sigmoid(a * logit + b)`` plus ``(a ** 2) / (2 c)`` (scikit-learn's
    ``LogisticRegression(C=c, class_weight="balanced")`` on one feature). The penalty keeps
    ``a`` finite when the two classes are separated, as they are when V works."""
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.size == 0 or y.min() == y.max():
        raise ValueError("Platt scaling needs validation models of both classes")
    w = np.where(y == 1, x.size / (2 * y.sum()), x.size / (2 * (x.size - y.sum())))

    def loss(theta: np.ndarray) -> float:
        z = theta[0] * x + theta[1]
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) + theta[0] ** 2 / (2 * c))

    res = minimize(loss, np.array([1.0, 0.0]), method="BFGS")
    return float(res.x[0]), float(res.x[1])


def calibrated_score(logit: float, platt: Sequence[float]) -> float:
    """P(pirated) after Platt scaling ``platt = (a, b)``."""
    return sigmoid(platt[0] * logit + platt[1])


def sigmoid(logit: float) -> float:
    """P(pirated) from V's logit, in float64 (stable for large |logit|)."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


# --------------------------------------------------------------------------- training

@dataclass
class TrainedFingerprint:
    """What training produces: the quantised fingerprints, V, and the zoo's scores."""

    images: np.ndarray  # (N, H, W, 3) uint8: exactly what a verification sends (as PNG)
    verifier: Any  # torch.nn.Module, eval mode
    dim: int
    config: FingerprintConfig
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {logit, score, label, split, kind}
    history: list[dict[str, float]] = field(default_factory=list)
    platt: tuple[float, float] = (1.0, 0.0)  # P(pirated) = sigmoid(a * logit + b), fitted on the validation split

    def split_scores(self, split: str, label: int) -> list[float]:
        return [v["score"] for v in self.scores.values() if v["split"] == split and v["label"] == label]

    def split_logits(self, split: str, label: int) -> list[float]:
        return [v["logit"] for v in self.scores.values() if v["split"] == split and v["label"] == label]


def _freeze(network: Network) -> None:
    network.module.eval()
    for p in network.module.parameters():
        p.requires_grad_(False)


def score_zoo(entries: Sequence[ZooEntry], images_u8: np.ndarray, verifier: Any,
              embed: Callable[[Network, Sequence[bytes]], np.ndarray] = embed_pngs) -> dict[str, dict[str, Any]]:
    """V's logit and score for every zoo model on the exact PNG fingerprints."""
    pngs = png_batch(images_u8)
    out = {}
    for e in entries:
        logit = verifier_logit(verifier, embed(e.network, pngs))
        out[e.name] = {"logit": logit, "score": sigmoid(logit), "label": e.label, "split": e.split, "kind": e.kind,
                       "family": e.family or e.name}
    return out


def _aruc_of(scores: dict[str, dict[str, Any]], split: str) -> float | None:
    pos = [v["score"] for v in scores.values() if v["split"] == split and v["label"] == 1]
    neg = [v["score"] for v in scores.values() if v["split"] == split and v["label"] == 0]
    return stats.aruc(pos, neg) if pos and neg else None


def train_fingerprint(owned: Network, entries: Sequence[ZooEntry], init_images: np.ndarray,
                      config: FingerprintConfig = FingerprintConfig()) -> TrainedFingerprint:
    """:func:`_train` with ``config.num_threads`` torch threads."""
    with torch_threads(config.num_threads):
        return _train(owned, entries, init_images, config)


def _train(owned: Network, entries: Sequence[ZooEntry], init_images: np.ndarray,
           config: FingerprintConfig) -> TrainedFingerprint:
    """Jointly optimise N fingerprints and the meta-verifier on the zoo's train split;
    keep the state with the best validation ARUC; score every zoo model (all splits) on
    the final PNG fingerprints.

    ``init_images``: real images (M >= N, H, W, 3) uint8, the fingerprints' starting point
    (grasses/MetaV starts from training images). ``entries`` with another embedding size
    than the owned model are refused (V reads a fixed N x d)."""
    import torch
    from tqdm import tqdm

    n = config.n_fingerprints
    if init_images.ndim != 4 or init_images.shape[0] < n or init_images.shape[-1] != 3:
        raise ValueError(f"init_images: expected at least {n} RGB images (M, H, W, 3), got {init_images.shape}")
    dim = owned.embed_dim
    bad = [e.name for e in entries if e.network.embed_dim != dim]
    if bad:
        raise ValueError(f"zoo models {bad}: embedding size differs from the owned model's {dim}")
    train_pos = [e for e in entries if e.split == "train" and e.label == 1]
    train_neg = [e for e in entries if e.split == "train" and e.label == 0]
    if not train_neg:
        raise ValueError("zoo: no negative (independent) model in the train split")
    val = [e for e in entries if e.split == "val"]

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    for net in [owned, *(e.network for e in entries)]:
        _freeze(net)

    pick = rng.choice(init_images.shape[0], size=n, replace=False)
    x0 = torch.from_numpy(init_images[np.sort(pick)].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    w = to_param(x0).clone().requires_grad_(True)
    verifier = make_verifier(n, dim, config.hidden)
    opt_x = torch.optim.Adam([w], lr=config.lr)
    opt_v = torch.optim.Adam(verifier.parameters(), lr=config.lr)
    decay = lambda step: 1.0 - step / (config.steps + 1)  # noqa: E731 - linear decay as in grasses/MetaV
    sched = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (opt_x, opt_v)]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def current_images() -> np.ndarray:
        with torch.no_grad():
            return (torch_round255(from_param(w)) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()

    best: tuple[float, int, np.ndarray, dict[str, Any]] | None = None
    stale = 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, config.steps + 1), desc="fingerprint", unit="step", leave=False)
    for step in bar:
        pos = [owned] + [train_pos[i].network for i in
                         rng.choice(len(train_pos), size=min(config.pos_per_step, len(train_pos)), replace=False)] \
            if train_pos else [owned]
        neg = [train_neg[i].network for i in
               rng.choice(len(train_neg), size=min(config.neg_per_step, len(train_neg)), replace=False)]
        tname = TRANSFORMS[int(rng.integers(len(TRANSFORMS)))]
        x = random_transform(quantise_ste(from_param(w)), tname, gen, noise_std=config.noise_std,
                             max_shift=config.max_shift)
        feats = torch.stack([embed_differentiable(net, x) for net in pos + neg])
        labels = torch.tensor([1.0] * len(pos) + [0.0] * len(neg))
        verifier.train()
        loss = loss_fn(verifier(feats).squeeze(-1), labels)
        opt_x.zero_grad()
        opt_v.zero_grad()
        loss.backward()
        opt_x.step()
        opt_v.step()
        for s in sched:
            s.step()
        verifier.eval()
        record: dict[str, float] = {"step": step, "loss": loss.item()}
        if val and (step % config.eval_every == 0 or step == config.steps):
            imgs = current_images()
            val_scores = score_zoo(val, imgs, verifier)
            val_aruc = _aruc_of(val_scores, "val")
            record["val_aruc"] = val_aruc if val_aruc is not None else float("nan")
            key = val_aruc if val_aruc is not None else -loss.item()
            if best is None or key >= best[0]:
                stale = 0 if best is None or key > best[0] else stale + 1
                best = (key, step, imgs, {k: v.detach().clone() for k, v in verifier.state_dict().items()})
            else:
                stale += 1
            if key >= config.stop_aruc or stale >= config.patience:
                history.append(record)
                log.info("fingerprint: early stop at step %d (validation ARUC %.4f)", step, key)
                break
        history.append(record)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    if best is not None:
        images = best[2]
        verifier.load_state_dict(best[3])
        log.info("fingerprint: kept step %d (validation ARUC %.3f)", best[1], best[0])
    else:
        images = current_images()
    verifier.eval()
    result = TrainedFingerprint(images=images, verifier=verifier, dim=dim, config=config, history=history)
    result.scores = score_zoo([ZooEntry("owned", owned, 1, "owned", "owned"), *entries], images, verifier)
    val_scores = [v for v in result.scores.values() if v["split"] == "val"]
    if len({v["label"] for v in val_scores}) == 2:
        result.platt = fit_platt([v["logit"] for v in val_scores], [v["label"] for v in val_scores])
        for v in result.scores.values():
            v["score"] = calibrated_score(v["logit"], result.platt)
        log.info("fingerprint: Platt scaling a = %.3f, b = %.3f (validation split)", *result.platt)
    return result


# --------------------------------------------------------------------------- calibration and decision

@dataclass(frozen=True)
class Calibration:
    """The committed null: held-out negatives' logits and scores, and the evaluation."""

    negative_logits: list[float]
    negative_scores: list[float]
    positive_scores: list[float]  # validation positives (reports show them beside the null)
    test_positive_scores: list[float]
    test_aruc: float | None
    val_aruc: float | None
    alpha: float
    test_positives_detected: int = 0  # held-out positives decided pirated at alpha
    false_alarms: int = 0  # held-out negatives decided pirated against the others (leave one out)
    fpr_upper_95: float = 1.0  # Clopper-Pearson upper bound on the false-alarm rate
    platt: tuple[float, float] = (1.0, 0.0)  # P(pirated) = sigmoid(a * logit + b)
    held_out_families: int = 0  # independent families behind the held-out negatives (the null's real size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "platt", tuple(float(v) for v in self.platt))  # JSON gives a list

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(trained: TrainedFingerprint, alpha: float = 0.01) -> Calibration:
    """The held-out (test split) negatives are the null; ARUC on the held-out test suspects."""
    neg_logits = trained.split_logits("test", 0)
    if not neg_logits:
        raise ValueError("calibration: the zoo's test split has no negative model")
    test_pos = trained.split_scores("test", 1)
    test_neg = trained.split_scores("test", 0)
    val_pos, val_neg = trained.split_scores("val", 1), trained.split_scores("val", 0)
    detected = sum(decide(x, neg_logits, alpha).decision == "positive" for x in trained.split_logits("test", 1))
    alarms = leave_one_out_false_alarms(neg_logits, alpha)
    return Calibration(
        negative_logits=neg_logits, negative_scores=test_neg, positive_scores=val_pos,
        test_positive_scores=test_pos,
        test_aruc=stats.aruc(test_pos, test_neg) if test_pos else None,
        val_aruc=stats.aruc(val_pos, val_neg) if val_pos and val_neg else None, alpha=alpha,
        test_positives_detected=detected, false_alarms=alarms,
        fpr_upper_95=stats.clopper_pearson_upper(alarms, len(neg_logits)), platt=trained.platt,
        held_out_families=len({v["family"] for v in trained.scores.values()
                               if v["split"] == "test" and v["label"] == 0}))


@dataclass(frozen=True)
class Decision:
    """The calibrated answer for one score."""

    p_value: float
    p_rank: float
    p_parametric: float | None
    how: str  # rank | t_tail
    decision: str
    effect_size: float  # (logit - mean of null logits) / their sd


def decide(logit: float, null_logits: Sequence[float], alpha: float) -> Decision:
    """The suspect's verifier logit against the held-out negatives' logits (ranking logits =
    ranking scores, without float saturation near 1): :func:`audit_lib.stats.rank_or_tail_test`."""
    t = stats.rank_or_tail_test(logit, null_logits, alpha)
    return Decision(p_value=t.p_value, p_rank=t.p_rank, p_parametric=t.p_parametric, how=t.how,
                    decision="positive" if t.p_value <= alpha else "negative", effect_size=t.effect_size)


def leave_one_out_false_alarms(null_logits: Sequence[float], alpha: float) -> int:
    """How many held-out negatives would be called pirated against the others (each one
    in turn as the suspect): the observed false alarms behind the Clopper-Pearson bound."""
    null = list(null_logits)
    if len(null) < 2:
        return 0
    return sum(decide(x, null[:i] + null[i + 1:], alpha).decision == "positive" for i, x in enumerate(null))


# --------------------------------------------------------------------------- enrolment artefacts

ARTEFACT_KIND = "fingerprint"


@dataclass
class FingerprintEnrolment:
    """Everything a verification needs, as committed at enrolment: the fingerprints (uint8
    pixels, sent as PNG), V's weights, the calibration (held-out negatives' scores, ARUC),
    the training config and the suspect zoo's manifest. Stored as one enrolment artefact
    (``audit_lib.ownership``: safetensors arrays + JSON spec, sha256, commitment)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    verifier_state: dict[str, Any]  # name -> torch tensor
    dim: int
    hidden: int
    calibration: Calibration
    config: dict[str, Any]
    zoo_manifest: dict[str, Any]
    commitment_sha256: str | None = None  # set once committed to the store

    @property
    def n_fingerprints(self) -> int:
        return int(self.images.shape[0])

    def verifier(self) -> Any:
        v = make_verifier(self.n_fingerprints, self.dim, self.hidden)
        v.load_state_dict(self.verifier_state)
        return v.eval()

    def pngs(self) -> list[bytes]:
        return png_batch(self.images)

    def to_artefact(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON spec) for ``audit_lib.ownership.commit_artefact``; no pickle."""
        tensors = {"fingerprints": np.ascontiguousarray(self.images)}
        for name, value in self.verifier_state.items():
            tensors[f"verifier.{name}"] = value.detach().cpu().numpy().astype(np.float32)
        pngs = self.pngs()
        spec = {"method": METHOD, "method_version": METHOD_VERSION, "dim": self.dim, "hidden": self.hidden,
                "n_fingerprints": self.n_fingerprints, "calibration": self.calibration.as_dict(),
                "config": self.config, "zoo_manifest": self.zoo_manifest,
                "fingerprint_png_sha256": [hashlib.sha256(b).hexdigest() for b in pngs]}
        return tensors, spec

    @classmethod
    def from_artefact(cls, tensors: dict[str, np.ndarray], spec: dict[str, Any],
                      commitment_sha256: str | None = None) -> FingerprintEnrolment:
        """Rebuild from a loaded (hash-checked) artefact; refuses a malformed one."""
        import torch

        images = tensors.get("fingerprints")
        if images is None or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("fingerprint artefact: no uint8 (N, H, W, 3) 'fingerprints' array")
        if spec.get("method") != METHOD:
            raise ValueError(f"fingerprint artefact: spec is for method {spec.get('method')!r}")
        state = {k.removeprefix("verifier."): torch.from_numpy(np.array(v)) for k, v in tensors.items()
                 if k.startswith("verifier.")}
        enrolment = cls(images=images, verifier_state=state, dim=int(spec["dim"]), hidden=int(spec["hidden"]),
                        calibration=Calibration(**spec["calibration"]), config=spec["config"],
                        zoo_manifest=spec["zoo_manifest"], commitment_sha256=commitment_sha256)
        enrolment.verifier()  # fails loudly on weights that do not fit N x d -> hidden -> 1
        return enrolment


def enrolment_from_training(trained: TrainedFingerprint, zoo_manifest: dict[str, Any],
                            alpha: float = 0.01) -> FingerprintEnrolment:
    """Package a trained fingerprint with its calibration for storage."""
    return FingerprintEnrolment(
        images=trained.images, verifier_state={k: v.detach().clone() for k, v in trained.verifier.state_dict().items()},
        dim=trained.dim, hidden=trained.config.hidden, calibration=calibrate(trained, alpha),
        config=trained.config.as_dict(), zoo_manifest=zoo_manifest)


# --------------------------------------------------------------------------- verification

def verify(handle: EncoderHandle, enrolment: FingerprintEnrolment, alpha: float | None = None) -> FindingResult:
    """Is the suspect behind ``handle`` a copy of the owned model? N queries (the PNG
    fingerprints, kind ``fingerprint``), V's score, the calibrated p-value and decision."""
    cal = enrolment.calibration
    alpha = cal.alpha if alpha is None else alpha
    n = enrolment.n_fingerprints
    commitment = enrolment.commitment_sha256
    assumptions = [
        "the held-out independent encoders are exchangeable with an independently trained suspect",
        "the held-out negatives include pruned, quantised and fine-tuned variants of a few independent "
        "encoders: they are not independent draws, so the null is smaller than its count suggests",
        "the fingerprints, verifier, null and alpha were committed before the suspect was queried",
        "the suspect answered the fingerprint queries with its own, unaltered embeddings",
    ]
    base_details: dict[str, Any] = {
        "null_scores": list(cal.negative_logits), "negative_scores": list(cal.negative_scores),
        "positive_scores": list(cal.positive_scores), "aruc": cal.test_aruc,
        "n_fingerprints": n, "commitment_sha256": commitment, "n_queries": n,
    }
    params = {"n_fingerprints": n, "config": enrolment.config}
    if enrolment.dim != handle.embedding_dim:
        return FindingResult(
            method=METHOD, method_version=METHOD_VERSION, hypothesis=HYPOTHESIS, statistic=None,
            null_description="not computed", p_value=None, alpha=alpha, decision="not_applicable",
            parameters=params, details={**base_details, "n_queries": 0, "observed": None, "score": None,
                                        "assumptions": assumptions + [
                                            f"the suspect's embeddings have {handle.embedding_dim} dimensions, "
                                            f"the verifier reads {enrolment.dim}: not comparable"]})
    emb = np.asarray(handle.encode_images(enrolment.pngs(), kind="fingerprint"), dtype=np.float64)
    if emb.shape != (n, enrolment.dim) or not np.all(np.isfinite(emb)):
        raise ValueError(f"suspect answered {emb.shape} (finite: {bool(np.all(np.isfinite(emb)))}), "
                         f"expected finite ({n}, {enrolment.dim})")
    logit = verifier_logit(enrolment.verifier(), emb)
    d = decide(logit, cal.negative_logits, alpha)
    k = len(cal.negative_scores)
    families = f" from {cal.held_out_families} independent families" if cal.held_out_families else ""
    if d.how == "rank":
        null_desc = (f"V's logits on {k} held-out independent encoders{families} (never used in training or model "
                     f"selection); p = (1 + #{{neg >= s}}) / ({k} + 1)")
    else:
        null_desc = (f"{k} held-out independent encoders{families}: the rank p-value cannot go below 1/{k + 1} = "
                     f"{1 / (k + 1):.3f} > alpha, so p is the Student-t predictive tail of a normal "
                     "fitted to their verifier logits (parametric; see assumptions)")
        assumptions.append("the held-out negatives' verifier logits are roughly normal (parametric tail)")
    details = {**base_details, "observed": logit, "score": calibrated_score(logit, cal.platt), "logit": logit, "p_rank": d.p_rank,
               "p_parametric": d.p_parametric, "p_method": d.how, "min_attainable_p_rank": 1 / (k + 1),
               "null_false_alarms": cal.false_alarms, "null_fpr_upper_95": cal.fpr_upper_95,
               "held_out_families": cal.held_out_families, "platt": list(cal.platt), "assumptions": assumptions}
    return FindingResult(method=METHOD, method_version=METHOD_VERSION, hypothesis=HYPOTHESIS,
                         statistic=logit, null_description=null_desc, p_value=d.p_value,
                         alpha=alpha, decision=d.decision, effect_size=d.effect_size,
                         parameters=params, details=details)


SPEC = register(MethodSpec(
    name=METHOD, version=METHOD_VERSION, area="ownership", hypothesis=HYPOTHESIS, access=frozenset({"image"}),
    run=verify, title="Fingerprint check (MetaV)",
    question="Does the suspect model respond to the owner's fingerprint inputs like a copy?",
    how=("The owner prepared a small set of fingerprint images and a verifier trained to tell "
         "copies of the owned model (fine-tuned, pruned, stolen ...) from independent models by "
         "their answers to those images. The suspect's answers are scored by the verifier, and "
         "the score is ranked among held-out independent models never used in training."),
    reference=("X. Pan, Y. Yan, M. Zhang, M. Yang: \"MetaV: A Meta-Verifier Approach to "
               "Task-Agnostic Model Fingerprinting\", ACM KDD 2022; arXiv:2201.07391."),
    assumptions=("the held-out negative models are representative of independent models a suspect could be",),
    task="audit_lib.pipelines.ownership:fingerprint_task", figures="audit_lib.reports.figures:fingerprint_figures",
    tables="audit_lib.reports.tables:fingerprint_table", order=40,
))
