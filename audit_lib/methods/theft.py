"""Encoder theft simulation: StolenEncoder.

Paper: Yupei Liu, Jinyuan Jia, Hongbin Liu, Neil Zhenqiang Gong, "StolenEncoder: Stealing
Pre-trained Encoders in Self-supervised Learning", ACM CCS 2022, arXiv 2201.05889;
official code liu00222/StolenEncoder.

What is implemented (the paper's Eq. for the stealing loss, as in the official code):

    L(x) = d(s(x), t(x)) + (lambda / k) * sum_{j=1..k} d(s(A_j(x)), t(x))

on L2-normalised features, with ``t`` the target's answer for the surrogate image ``x``
(queried once; the augmented views A_j(x) reuse it, so queries = Q surrogate images), ``s``
a freshly initialised encoder, and ``d`` the (non-squared) Euclidean distance, the official
code's default (``l1`` and ``cosine`` = -cos are the code's other options). Defaults are the
paper's run scripts': lambda = 20, k = 1, SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
batch 64, 100 epochs, seed 100; view augmentation horizontal flip p=0.5, colour jitter
(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale p=0.2 (no crop, as in the code).

Where we depart, and why:

- The stolen network sees the same normalisation (mean/std) as the architecture's own
  preprocessing, because it is later used through an ordinary encoder handle; the code feeds
  raw [0, 1] pixels. This is a fixed affine map of the input and does not change the method.
- Views are made by the zoo's batched augmentation (``audit_lib.zoo.augment.BatchAugment``,
  crop switched off): per-image random factors, but the jitter operations in a fixed order
  and hue as a chroma rotation (torchvision: random order, HSV shift); cheaper on CPU.
- ``lr`` and ``epochs`` are parameters: on a 2-core CPU the ci profile trains few epochs,
  and may raise ``lr`` to reach a usable copy in that time (the recipe records what was used).
- Evaluation (accuracy of the same downstream MLP on target vs stolen features, prediction
  agreement, mean feature cosine) follows the paper; the calibrated part is ours: the stolen
  copy's agreement with the target is ranked against independently trained encoders'
  agreement (empirical p-value), so "stealable at this budget" is a statement with a null.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from audit_lib.encoders.base import EncoderHandle
from audit_lib.findings import FindingResult
from audit_lib.imaging import png_bytes
from audit_lib.method_registry import MethodSpec, register
from audit_lib.methods.downstream import (DownstreamClassifier, DownstreamRecipe, agreement, fit_classifier,
                                          l2_normalise, mean_cosine)

log = logging.getLogger(__name__)

METHOD = "theft"
METHOD_VERSION = "1.0"
DISTANCES = ("euclidean", "l1", "cosine")


@dataclass(frozen=True)
class StealRecipe:
    """How the stolen encoder is trained (defaults: the paper's run scripts)."""

    architecture: str = "small_cnn:small-cnn-32"  # the stolen encoder's network (the attacker's choice)
    lam: float = 20.0  # lambda, weight of the augmented-view term
    k: int = 1  # augmented views per surrogate image
    distance: str = "euclidean"  # d(., .) on unit vectors: euclidean | l1 | cosine
    lr: float = 1e-3  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    batch_size: int = 64  # surrogate images per step
    epochs: int = 100  # passes over the surrogate set (published 100)
    seed: int = 100  # torch seed (init, shuffling, augmentation)
    flip_p: float = 0.5  # horizontal flip probability
    jitter_p: float = 0.8  # colour jitter probability
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2  # grayscale probability

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance {self.distance!r}: expected one of {DISTANCES}")
        if self.k < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"steal recipe: k={self.k}, epochs={self.epochs}, batch={self.batch_size}, "
                             f"lr={self.lr} out of range")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the loss -------------------------------------------------------------------------------

def feature_distance(a: Any, b: Any, kind: str = "euclidean") -> Any:
    """Per-row distance between L2-normalised feature batches (torch tensors)."""
    if kind == "euclidean":
        return (a - b).norm(dim=1)
    if kind == "l1":
        return (a - b).abs().sum(dim=1)
    if kind == "cosine":
        return -(a * b).sum(dim=1)
    raise ValueError(f"distance {kind!r}: expected one of {DISTANCES}")


def stolen_encoder_loss(s_clean: Any, s_views: Sequence[Any], t: Any, *, lam: float = 20.0,
                        distance: str = "euclidean") -> Any:
    """The StolenEncoder loss on a batch, averaged over the batch:
    mean_x [ d(s(x), t(x)) + lam / k * sum_j d(s(A_j x), t(x)) ]. All inputs are
    normalised here (the paper's features are L2-normalised)."""
    import torch.nn.functional as F

    t = F.normalize(t, dim=1)
    loss = feature_distance(F.normalize(s_clean, dim=1), t, distance).mean()
    k = len(s_views)
    if k:
        view_term = sum(feature_distance(F.normalize(v, dim=1), t, distance).mean() for v in s_views)
        loss = loss + (lam / k) * view_term
    return loss


# --- view augmentation ---------------------------------------------------------------------

def view_augment_config(recipe: StealRecipe) -> Any:
    """StolenEncoder's view augmentation as the zoo's batched augmentation: flip, colour
    jitter, grayscale, and no crop (the official code comments the crop out)."""
    from audit_lib.zoo.recipes import AugmentConfig

    bri, con, sat, hue = recipe.jitter
    return AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=recipe.flip_p,
                         jitter_p=recipe.jitter_p, brightness=bri, contrast=con, saturation=sat, hue=hue,
                         grayscale_p=recipe.grayscale_p)


# --- images and queries ---------------------------------------------------------------------

def query_once(handle: EncoderHandle, images: np.ndarray, *, kind: str = "image") -> np.ndarray:
    """Embed each (h, w, 3) uint8 image once through ``handle`` (PNG-encoded, so a remote
    API receives exactly these pixels); returns L2-normalised float32 features."""
    payload = [png_bytes(im) for im in images]
    feats = np.asarray(handle.encode_images(payload, kind=kind), dtype=np.float32)
    if feats.shape[0] != len(payload) or not np.all(np.isfinite(feats)):
        raise ValueError(f"target answered {feats.shape} for {len(payload)} images or non-finite values")
    return l2_normalise(feats)


# --- stealing -------------------------------------------------------------------------------

def module_sha256(module: Any) -> str:
    """sha256 of a module's state dict as safetensors bytes (names its weights)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return hashlib.sha256(save(state)).hexdigest()


@dataclass
class StolenCopy:
    """A trained stolen encoder and what it cost."""

    network: Any  # audit_lib.encoders.architectures.Network
    n_queries: int
    recipe: StealRecipe
    weights_sha256: str
    final_loss: float
    losses: list[float] = field(default_factory=list)

    def handle(self, device: str | None = None) -> EncoderHandle:
        """The copy as an encoder handle (LocalEncoder)."""
        from audit_lib.encoders.local import LocalEncoder

        return LocalEncoder.from_network(self.network, self.weights_sha256, device=device)


def stolen_architecture(architecture: str, target_image_size: int | None) -> str:
    """The stolen encoder's architecture string with its input size following the
    target's preprocessing where the family takes a size and none was set: a bare
    ``torchvision:NAME`` becomes ``torchvision:NAME@SIZE``. ``small_cnn`` and ``open_clip``
    configs fix their own size (surrogate images are resized to it while training)."""
    family, _, name = architecture.partition(":")
    if family == "torchvision" and name and "@" not in name and target_image_size:
        return f"{architecture}@{int(target_image_size)}"
    return architecture


def build_stolen_network(recipe: StealRecipe, target_dim: int) -> Any:
    """A fresh network of the recipe's architecture with output dimension ``target_dim``
    (a linear head is appended when the architecture's own dimension differs, as the paper
    adapts its ResNet34 to CLIP's 1024 dimensions). Architectures: ``small_cnn:NAME``,
    ``torchvision:NAME@SIZE`` (classifier removed), or ``open_clip:NAME``, of which only the
    vision tower is used (the attacker steals an image encoder)."""
    import torch.nn as nn

    from audit_lib.encoders.architectures import Network, build

    net = build(recipe.architecture)
    if net.encode_text is not None:  # open_clip: keep the vision tower only
        visual = net.module.visual
        net = Network(module=visual, preprocess=net.preprocess, embed_dim=int(visual.output_dim),
                      encode_image=visual, info={**net.info, "tower": "visual"})
    if net.embed_dim == target_dim:
        return net
    module = nn.Sequential(net.module, nn.Linear(net.embed_dim, target_dim))
    return Network(module=module, preprocess=net.preprocess, embed_dim=target_dim, encode_image=module,
                   info={**net.info, "head": f"{net.embed_dim}->{target_dim}"})


def train_stolen_encoder(images: np.ndarray, target_features: np.ndarray, recipe: StealRecipe = StealRecipe(),
                         *, progress: bool = True) -> StolenCopy:
    """Train a stolen encoder on surrogate ``images`` ((n, h, w, 3) uint8, at the stolen
    architecture's input size) and the target's answers ``target_features`` ((n, d))."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    images = np.asarray(images)
    t_all = torch.from_numpy(l2_normalise(target_features))
    if images.ndim != 4 or images.shape[0] != t_all.shape[0] or images.shape[0] == 0:
        raise ValueError(f"steal: {images.shape} images for {tuple(t_all.shape)} target answers")
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    net = build_stolen_network(recipe, int(t_all.shape[1]))
    size = net.preprocess.image_size
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    if x_all.shape[-1] != size or x_all.shape[-2] != size:
        x_all = F.interpolate(x_all, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    mean = torch.tensor(net.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(net.preprocess.std).view(1, 3, 1, 1)
    from audit_lib.zoo.augment import BatchAugment

    augment = BatchAugment(view_augment_config(recipe))
    model = net.module
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    n = x_all.shape[0]
    losses: list[float] = []
    bar = tqdm(range(recipe.epochs), desc=f"steal Q={n}", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, recipe.batch_size):
            idx = perm[start:start + recipe.batch_size]
            x, t = x_all[idx], t_all[idx]
            views = [augment(x, gen) for _ in range(recipe.k)]
            out = model((torch.cat([x, *views]) - mean) / std)
            chunks = out.split(len(idx))
            loss = stolen_encoder_loss(chunks[0], chunks[1:], t, lam=recipe.lam, distance=recipe.distance)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return StolenCopy(net, n, recipe, module_sha256(model), losses[-1], losses)


def steal_encoder(target: EncoderHandle, surrogate: np.ndarray, recipe: StealRecipe = StealRecipe(), *,
                  progress: bool = True) -> StolenCopy:
    """Query ``target`` (any encoder handle; a remote one counts these against its budget)
    once per surrogate image and train a stolen copy on the answers."""
    answers = query_once(target, surrogate, kind="theft")
    log.info("queried the target on %d surrogate images; training the stolen copy", len(surrogate))
    return train_stolen_encoder(surrogate, answers, recipe, progress=progress)


# --- evaluation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelledSplit:
    """A labelled downstream task: train and test images ((n, h, w, 3) uint8) and labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass
class Reference:
    """One encoder's downstream classifier and its test predictions."""

    train_features: np.ndarray
    test_features: np.ndarray
    classifier: DownstreamClassifier
    predictions: np.ndarray
    accuracy: float


def reference_for(handle: EncoderHandle, split: LabelledSplit, recipe: DownstreamRecipe = DownstreamRecipe(),
                  *, kind: str = "downstream") -> Reference:
    """Embed the downstream split through ``handle`` and train the downstream classifier."""
    tr = query_once(handle, split.train_images, kind=kind)
    te = query_once(handle, split.test_images, kind=kind)
    clf = fit_classifier(tr, split.train_labels, recipe)
    pred = clf.predict(te)
    return Reference(tr, te, clf, pred, float(np.mean(pred == split.test_labels)))


def compare(target: Reference, other: Reference) -> dict[str, float]:
    """Accuracy, prediction agreement and feature cosine of ``other`` against ``target``."""
    cos = mean_cosine(target.test_features, other.test_features, fit_reference=target.train_features,
                      fit_other=other.train_features)
    return {"accuracy": other.accuracy, "agreement": agreement(target.predictions, other.predictions),
            "cosine": cos}


# --- the curve and the finding --------------------------------------------------------------

def parse_budgets(text: str, train_size: int | None) -> list[int]:
    """``"1%,5%,10%"`` (of the target's training-set size) or absolute counts ``"50,100"``;
    a share needs ``train_size`` (an API does not say it)."""
    budgets = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.endswith("%") and train_size is None:
            raise ValueError(f"budget {part!r}: a share of the training set needs its size (--train-size N), "
                             "or give a query count")
        try:
            q = round(float(part[:-1]) / 100 * train_size) if part.endswith("%") else int(part)
        except ValueError:
            raise ValueError(f"budget {part!r}: expected a percentage like 5% or a query count") from None
        if q < 1:
            raise ValueError(f"budget {part!r} gives {q} queries (training-set size {train_size})")
        budgets.append(q)
    if not budgets:
        raise ValueError("budgets: none given")
    return sorted(set(budgets))


def defence_label(defences: Mapping[str, Any] | None) -> str:
    """``none`` or e.g. ``noise:0.1`` / ``topk:32`` / ``round:2``."""
    if not defences:
        return "none"
    names = {"noise_sigma": "noise", "top_k": "topk", "round_decimals": "round"}
    return "+".join(f"{names[k]}:{v}" for k, v in sorted(defences.items()) if v is not None)


def parse_defence(text: str) -> dict[str, Any]:
    """``noise:0.1`` | ``topk:32`` | ``round:2`` -> the server's defence settings."""
    name, _, value = text.partition(":")
    try:
        if name == "noise":
            return {"noise_sigma": float(value)}
        if name == "topk":
            return {"top_k": int(value)}
        if name == "round":
            return {"round_decimals": int(value)}
    except ValueError:
        pass
    raise ValueError(f"defence {text!r}: expected noise:SIGMA, topk:K or round:DECIMALS")


@dataclass
class CurvePoint:
    budget: int
    defence: str
    stolen_accuracy: float
    target_accuracy: float
    agreement: float
    cosine: float
    utility_cost: float
    budget_fraction: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def theft_curve(attack_handles: Mapping[str, EncoderHandle], clean: EncoderHandle, surrogate: np.ndarray, budgets: Sequence[int],
                split: LabelledSplit, *, recipe: StealRecipe = StealRecipe(),
                downstream: DownstreamRecipe = DownstreamRecipe(), train_size: int | None = None,
                on_copy: Callable[[str, int, StolenCopy], None] | None = None,
                progress: bool = True) -> tuple[list[CurvePoint], Reference, dict[str, float]]:
    """Steal the target at every budget through each handle in ``attack_handles`` (defence
    label -> the handle an attacker with that key queries; ``"none"`` is undefended) and
    evaluate every copy against the clean target's downstream classifier.

    Returns the curve, the clean target's reference and each defence's utility cost
    (clean accuracy minus the accuracy a legitimate user gets from defended features)."""
    budgets = sorted(budgets)
    if max(budgets) > len(surrogate):
        raise ValueError(f"budget {max(budgets)} exceeds the {len(surrogate)} surrogate images")
    target_ref = reference_for(clean, split, downstream)
    costs: dict[str, float] = {}
    points: list[CurvePoint] = []
    for label, handle in attack_handles.items():
        if label == "none":
            costs[label] = 0.0
        else:
            costs[label] = target_ref.accuracy - reference_for(handle, split, downstream).accuracy
        for q in budgets:
            copy = steal_encoder(handle, surrogate[:q], recipe, progress=progress)
            if on_copy is not None:
                on_copy(label, q, copy)
            m = compare(target_ref, reference_for(copy.handle(), split, downstream))
            points.append(CurvePoint(q, label, m["accuracy"], target_ref.accuracy, m["agreement"], m["cosine"],
                                     costs[label], q / train_size if train_size else None))
            log.info("theft %s Q=%d: stolen acc %.3f (target %.3f), agreement %.3f, cosine %.3f",
                     label, q, m["accuracy"], target_ref.accuracy, m["agreement"], m["cosine"])
    return points, target_ref, costs


def theft_finding(points: Sequence[CurvePoint], target_ref: Reference, independent: Sequence[Reference], *,
                  reference_budget: int, alpha: float = 0.05, recipe: StealRecipe = StealRecipe(),
                  downstream: DownstreamRecipe = DownstreamRecipe()) -> FindingResult:
    """The theft-risk finding: the undefended copy's agreement with the target at
    ``reference_budget`` queries, ranked against independently trained encoders' agreement
    with the target (rank p-value, or the Student-t predictive tail when there are too few
    independents for the rank to reach alpha: :func:`audit_lib.stats.rank_or_tail_test`).
    Positive = the API can be stolen at that budget beyond what independent training explains."""
    from audit_lib.stats import clopper_pearson_upper, rank_or_tail_test

    ref = [p for p in points if p.defence == "none" and p.budget == reference_budget]
    if not ref:
        raise ValueError(f"theft finding: no undefended point at budget {reference_budget}")
    if not independent:
        raise ValueError("theft finding: no independent encoders for the null")
    observed = ref[0].agreement
    null = [compare(target_ref, r)["agreement"] for r in independent]
    test = rank_or_tail_test(observed, null, alpha)
    p = test.p_value
    ratio = ref[0].stolen_accuracy / target_ref.accuracy if target_ref.accuracy > 0 else None
    return FindingResult(
        method=METHOD, method_version=METHOD_VERSION,
        hypothesis=(f"H0: a copy trained on {reference_budget} API answers agrees with the target's "
                    "downstream predictions no more than an independently trained encoder does"),
        statistic=observed,
        null_description=(f"downstream prediction agreement with the target of {len(null)} independently "
                          f"trained encoders (same classifier recipe); {'rank' if test.how == 'rank' else 'Student-t tail'} "
                          "p-value"),
        p_value=p, alpha=alpha, decision="positive" if p <= alpha else "negative",
        effect_size=ratio,
        parameters={"recipe": recipe.as_dict(), "downstream": downstream.as_dict(),
                    "reference_budget": reference_budget, "budgets": sorted({pt.budget for pt in points}),
                    "defences": sorted({pt.defence for pt in points})},
        details={"observed": observed, "null_scores": null, "p_rank": test.p_rank, "p_method": test.how,
                 "n_queries": int(sum(pt.budget for pt in points)),
                 "curve": [pt.as_dict() for pt in points],
                 "stolen_to_target_accuracy": ratio,
                 "min_attainable_p": 1 / (len(null) + 1),
                 "null_too_small_for_alpha": 1 / (len(null) + 1) > alpha,
                 "false_alarm_bound": clopper_pearson_upper(0, len(null)),
                 "assumptions": [
                     "the surrogate images are ordinary images an attacker could obtain, disjoint from the "
                     "target's training set",
                     "the independent encoders are a fair sample of encoders trained without access to the target",
                     "the stolen copy is trained with the published StolenEncoder recipe; a stronger attacker "
                     "could do better, so this is a lower bound on the risk",
                     *(["the independent encoders' agreements are roughly normal (too few for a rank p-value to "
                        "reach alpha, so a Student-t predictive tail was used)"] if test.how == "t_tail" else []),
                     *([f"the null has only {len(null)} independent encoder(s): the smallest rank p-value, "
                        f"1/{len(null) + 1}, is above alpha {alpha} and a Student-t tail needs at least 3, so this "
                        "finding cannot be positive; register more reference models"]
                       if test.how == "rank" and 1 / (len(null) + 1) > alpha else [])]},
    )


def plot_curve(points: Sequence[CurvePoint], path: Any, *, title: str = "StolenEncoder theft curve") -> None:
    """Stolen-copy downstream accuracy over budget, one line per defence, target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    labels = sorted({p.defence for p in points}, key=lambda s: (s != "none", s))
    for label in labels:
        pts = sorted((p for p in points if p.defence == label), key=lambda p: p.budget)
        cost = pts[0].utility_cost
        name = label if label == "none" else f"{label} (utility cost {cost:+.3f})"
        ax.plot([p.budget for p in pts], [p.stolen_accuracy for p in pts], marker="o", label=name)
    target_acc = points[0].target_accuracy
    ax.axhline(target_acc, color="black", linestyle="--", linewidth=1, label=f"target ({target_acc:.3f})")
    ax.axhline(0.9 * target_acc, color="grey", linestyle=":", linewidth=1, label="0.9 x target")
    ax.set_xlabel("queries (surrogate images)")
    ax.set_ylabel("downstream accuracy of the stolen copy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


SPEC = register(MethodSpec(
    name=METHOD, version=METHOD_VERSION, area="ownership",
    hypothesis=("H0: a copy trained on the API's answers agrees with the target's downstream predictions "
                "no more than an independently trained encoder does"),
    access=frozenset({"image"}), run=theft_finding, title="Theft-risk estimate (StolenEncoder)",
    question="How cheaply could the owned model be copied through its API?",
    how=("A copy is trained only from the owned model's answers to a budget of queries, as a "
         "thief would, with and without output defences. The copy's accuracy on a downstream "
         "task is compared with the original's. This estimates how exposed the owned model "
         "is; it is not evidence about a suspect model. Where the copy's agreement with the "
         "original is ranked among independently trained encoders, the p-value says how "
         "unusual that agreement would be without theft."),
    reference=("Y. Liu, J. Jia, H. Liu, N. Z. Gong: \"StolenEncoder: Stealing Pre-trained Encoders "
               "in Self-supervised Learning\", ACM CCS 2022; arXiv:2201.05889."),
    assumptions=("the surrogate images resemble what a thief could obtain",),
    tests_the_case=False, descriptive=True, departs=False,
    figures="audit_lib.reports.figures:theft_figures", tables="audit_lib.reports.tables:theft_table",
    summary="audit_lib.reports.tables:theft_summary", order=50,
))
