"""Encoder watermarking: AWEncoder.

Paper: Tianxing Zhang, Hanzhou Wu, Xiaofeng Lu, Guangling Sun, "AWEncoder: Adversarial
Watermarking Pre-trained Encoders in Contrastive Learning", arXiv 2208.03948 (Applied
Sciences 13(6):3531, 2023). No official code exists; the stages follow the paper's
description:

1. Generate: a random key image ``x_key`` and a marked set D_w; one perturbation delta,
   ``||delta||_inf <= eps`` (eps = 8/255), found by projected (sign-)gradient steps on
       min_delta  sum_{x in D_w} [ cos(E(x + delta), E(x)) - cos(E(x + delta), E(x_key)) ]
   so that marked images leave their own embedding and surround the key's.
2. Embed: fine-tune the owned encoder E' from E_0 with
       L = L_NT-Xent(clean views) + alpha * mean_{x in D_w} [1 - cos(E'(x + delta), E'(x_key))]
           + beta * mean_x ||E'(x)/|E'(x)| - E_0(x)/|E_0(x)| ||^2
   (contrastive loss on clean data, pull of marked samples to the key, anchor to the
   original embeddings).
3. Verify, white-box: paired shifts d_i = cos(E(x_i + delta), E(x_key)) - cos(E(x_i), E(x_key))
   on held-out probes x_i, statistic = mean d_i. Black-box: the paper queries a downstream
   classifier built on the suspect with marked probes and reads the discrepancy of its output
   against the key's class (the "watermark rate": share of marked probes it puts in the class
   it gives x_key).

Where we depart, and why:

- Stage 1 is made specific to the owner's model and its copies (our default; the paper's
  stage 1 is the special case with no shadow and no shaping model, ``--published``). The
  paper optimises delta on the owned encoder alone, and such a perturbation transfers: on a
  small owned encoder measured in this project the unmarked encoder and independently
  trained ones moved towards the key almost as much as the marked one, and a copy stolen
  through the API (StolenEncoder) learns the owner's answers on clean images but not the
  fine-tuned response to delta, so it responded no more than independent encoders. delta is
  therefore optimised, as a conferrable adversarial example (Lukas, Zhang, Kerschbaum,
  "Deep Neural Network Fingerprinting by Conferrable Adversarial Examples", ICLR 2021,
  arXiv 1912.00888), on an ensemble: the paper's loss summed over the owned encoder and
  ``shadow_copies`` copies of it stolen at enrolment from the owner's own images (what a
  thief's copy will look like, as SSLGuard's shadow encoder: Cong, He, Zhang, CCS 2022),
  minus ``shaping_weight`` times the mean shift towards the key of ``shaping_independents``
  encoders trained independently on the owner's images:
       min_delta  sum_{M in {E, S_1..S_s}} sum_x [cos(M(x+delta), M(x)) - cos(M(x+delta), M(key))]
                  + gamma/m * sum_{N_1..N_m} sum_x [cos(N(x+delta), N(key)) - cos(N(x), N(key))]
  The shaping encoders are never part of the verification null (which is trained on other
  images with other seeds, or registered), so the null stays exchangeable with an unseen
  independent suspect.
- Stage 2 pulls harder than this project first did (weight 10, 150 steps; at weight 1 and
  60 steps the marked encoder moved no more than the unmarked one) and adds an anchor of
  marked images under control perturbations to their original embeddings, so that only delta
  moves a marked model towards the key (``control_anchor``; 0 in :meth:`WatermarkRecipe.published`).
- Pixels live on the uint8 grid: delta is an integer number of grey levels per pixel
  (|delta| <= 8 levels = 8/255) and marked images are exactly what a PNG query carries, so
  the suspect sees the same pixels the owner committed to.
- The paper's verification thresholds an output discrepancy; ours is a calibrated test.
  H0: the suspect was not derived from the marked
  encoder. Two nulls, and the watermark is found only when both reject (an
  intersection-union test, p = max of the two, valid at level alpha):
  (a) independence: the real delta's statistic on the zoo's independently trained encoders,
  computed at enrolment. Adversarial perturbations transfer, so an independent encoder
  responds to delta more than to a random perturbation; only other encoders' response to
  the same delta is a fair null for it. With K encoders the rank p-value cannot go below
  1 / (K + 1); when that exceeds alpha a Student-t predictive tail fitted to the K scores
  is used (``audit_lib.stats.rank_or_tail_test``) and the finding says so.
  (b) specificity: the statistic on the suspect for C control perturbations of equal norm
  (delta's values shuffled over pixels with random signs: the same L-inf and L2 norm and
  the same value histogram), so a suspect that shifts towards the key under any
  perturbation is not called marked. Same rule (rank, or t tail when C is too small).
- Black-box statistic: the paired shift of the key class's log score,
  mean_i [log s_k(x_i + delta) - log s_k(x_i)], with k the class the suspect's classifier
  gives x_key and s_k its class probability (a label-only API gives one-hot scores, floored
  at 1e-6, and the statistic becomes the net share of probes moved into the key's class,
  times log 1e6). Measured on the ci zoo, the unpaired watermark rate fails: the
  independents' rate is mostly their own clean probes already in the key's class (up to 6 of
  32), while the marked encoder moves only 3 of 32 probes into it (its marked probes reach a
  cosine of 0.38 to the key, too little to cross a class boundary often). Pairing each
  probe with its clean self removes each model's base rate; the class score sees the pull
  before a label flips; and the log puts it on the scale on which a logistic classifier
  responds linearly to an embedding shift (the probability itself is compressed where
  s_k is small, as it is for most probes). The hit rates stay in the finding as
  ``watermark_rate`` / ``clean_rate`` / ``flips_into_key_class``. The nulls are the same two
  as the white-box check (independent encoders' classifiers, the suspect's own controls).
- Everything the test needs (key, delta, controls, probes, alpha, the independent scores)
  is committed (hashed and timestamped, :mod:`audit_lib.ownership.artefacts`) before any
  suspect is queried.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from audit_lib.encoders.base import EncoderHandle
from audit_lib.findings import FindingResult
from audit_lib.imaging import png_bytes
from audit_lib.method_registry import MethodSpec, register
from audit_lib.methods.downstream import l2_normalise

log = logging.getLogger(__name__)

METHOD = "watermark"
METHOD_VERSION = "1.2"  # 1.1: black-box statistic = paired shift of the key class's log score;
# 1.2: delta conferrable (optimised on the owned encoder and shadow copies against shaping independents)
ARTEFACT_KIND = "watermark"
SCORE_FLOOR = 1e-6  # class scores are floored here before the log (one-hot answers: a flip = log 1e6)


@dataclass(frozen=True)
class WatermarkRecipe:
    """Generation, embedding and verification settings."""

    eps_levels: int = 8  # ||delta||_inf in grey levels (8/255, the paper's budget)
    pgd_steps: int = 30  # projected sign-gradient steps (one grey level each)
    n_marked: int = 32  # |D_w|, images the perturbation is optimised on and embedded with
    n_probes: int = 32  # held-out probes for verification
    n_controls: int = 99  # control perturbations of equal norm (p >= 1/(C + K + 1))
    alpha_pull: float = 10.0  # alpha: weight of the pull of marked images to the key (1 gave no measurable mark)
    beta_anchor: float = 5.0  # beta: weight of the anchor to the original embeddings
    temperature: float = 0.2  # NT-Xent temperature of the contrastive term
    embed_steps: int = 150  # fine-tuning steps
    batch_size: int = 32  # clean images per step (two views each)
    marked_batch: int = 16  # marked images per step
    lr: float = 1e-4  # Adam learning rate of the fine-tuning
    seed: int = 7  # key, marked set, probes, controls, training
    shadow_copies: int = 1  # copies of the owned encoder stolen from the owner's images, delta moves them too
    shadow_epochs: int = 40  # StolenEncoder epochs of each shadow copy (lambda 20, k 1, SGD lr 0.05)
    shaping_independents: int = 3  # encoders trained independently on the owner's images, delta spares them
    shaping_epochs: int = 10  # their SimCLR epochs (a few epochs give near-random encoders that shape nothing)
    shaping_weight: float = 2.0  # gamma: weight of their mean shift towards the key
    control_anchor: float = 5.0  # weight of the anchor of control-perturbed marked images (0: the paper's loss)
    embed_controls: int = 64  # control perturbations drawn for that anchor (never the committed ones)

    @classmethod
    def published(cls, **kw: Any) -> WatermarkRecipe:
        """The paper's stages 1 and 2: delta optimised on the owned encoder alone, no control
        anchor, the pull weight and steps of this project's first measurements (README's zoo table)."""
        return cls(**{"shadow_copies": 0, "shaping_independents": 0, "control_anchor": 0.0, "alpha_pull": 1.0,
                      "embed_steps": 60, **kw})

    @classmethod
    def chosen(cls, *, published: bool = False, **kw: Any) -> WatermarkRecipe:
        """The recipe a CLI or DAG run asks for: :meth:`published` or the default, with the
        settings it gave (None: the recipe's own value)."""
        given = {k: v for k, v in kw.items() if v is not None}
        return cls.published(**given) if published else cls(**given)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- stage 1: generate --------------------------------------------------------------------

def _to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def _normaliser(network: Any) -> Callable[[Any], Any]:
    import torch

    mean = torch.tensor(network.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(network.preprocess.std).view(1, 3, 1, 1)
    return lambda x: (x - mean) / std


def apply_delta(images: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Marked images: uint8 images plus an integer grey-level perturbation, clipped."""
    out = np.asarray(images, dtype=np.int16) + np.asarray(delta, dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def generate_delta(network: Any, marked: np.ndarray, key: np.ndarray, recipe: WatermarkRecipe, *,
                   shadows: Sequence[Any] = (), shapers: Sequence[Any] = ()) -> np.ndarray:
    """AWEncoder stage 1: one perturbation (int8 grey levels, |delta| <= eps) by projected
    sign-gradient descent on sum_x [cos(M(x+d), M(x)) - cos(M(x+d), M(key))], summed over the
    owned encoder and its ``shadows`` (stolen copies), plus ``recipe.shaping_weight`` times the
    mean shift towards the key of the ``shapers`` (independent encoders; the delta should leave
    them where they are). With no shadows and no shapers this is the paper's objective."""
    import torch
    import torch.nn.functional as F

    x = _to_tensor(marked)
    k = _to_tensor(key[None])
    gamma = recipe.shaping_weight / max(1, len(shapers))
    terms = []  # (model, normaliser, E(x), E(key), weight): +1 pull towards the key, -gamma spare
    with torch.no_grad():
        for net, weight in [(network, 1.0), *((m, 1.0) for m in shadows), *((m, -gamma) for m in shapers)]:
            norm, model = _normaliser(net), net.module.eval()
            terms.append((model, norm, F.normalize(model(norm(x)), dim=1), F.normalize(model(norm(k)), dim=1),
                          weight))
    delta = torch.zeros(1, *x.shape[1:])
    step, eps = 1.0 / 255.0, recipe.eps_levels / 255.0
    for _ in range(recipe.pgd_steps):
        delta.requires_grad_(True)
        loss = torch.zeros(())
        for model, norm, e_x, e_k, weight in terms:
            e = F.normalize(model(norm((x + delta).clamp(0, 1))), dim=1)
            towards_key = (e * e_k).sum(1) - (e_x * e_k).sum(1)
            if weight > 0:
                loss = loss + weight * ((e * e_x).sum(1) - towards_key).sum()
            else:
                loss = loss - weight * towards_key.sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta - step * grad.sign()).clamp(-eps, eps)
    levels = torch.round(delta.detach()[0] * 255).permute(1, 2, 0).numpy()
    return np.clip(levels, -recipe.eps_levels, recipe.eps_levels).astype(np.int8)


def control_deltas(delta: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` control perturbations of equal norm: delta's values shuffled over pixel
    positions with random signs (same L-inf and L2 norm, same |value| histogram)."""
    rng = np.random.default_rng(seed)
    flat = np.asarray(delta, dtype=np.int8).ravel()
    out = np.empty((n, *delta.shape), dtype=np.int8)
    for j in range(n):
        vals = rng.permutation(flat) * rng.choice(np.array([-1, 1], dtype=np.int8), size=flat.size)
        out[j] = vals.reshape(delta.shape).astype(np.int8)
    return out


# --- stage 2: embed -----------------------------------------------------------------------

def embed_watermark(network: Any, clean: np.ndarray, marked: np.ndarray, key: np.ndarray, delta: np.ndarray,
                    recipe: WatermarkRecipe, *, progress: bool = True) -> tuple[Any, list[float]]:
    """AWEncoder stage 2: fine-tune a copy of ``network`` with the contrastive loss on
    ``clean`` images + alpha * pull of marked images to the key + beta * anchor to the
    original embeddings, + ``recipe.control_anchor`` * anchor of marked images under control
    perturbations (delta's values shuffled, drawn here with their own seed, never the
    committed controls) to the original embeddings, so that only delta moves a marked model
    towards the key. Returns the marked network and the per-step losses. Batch-norm
    statistics stay frozen (eval mode), which keeps clean embeddings close to E_0."""
    import copy

    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from audit_lib.zoo.augment import BatchAugment
    from audit_lib.zoo.losses import nt_xent
    from audit_lib.zoo.recipes import AugmentConfig

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    norm = _normaliser(network)
    original = network.module.eval()
    marked_net = copy.deepcopy(network)
    model = marked_net.module.eval()
    for p in original.parameters():
        p.requires_grad_(False)
    augment = BatchAugment(AugmentConfig())
    xc = _to_tensor(clean)
    xw = _to_tensor(apply_delta(marked, delta))
    xk = _to_tensor(key[None])
    xm = _to_tensor(marked)
    anchored = recipe.control_anchor > 0 and recipe.embed_controls > 0
    if anchored:
        ctrl = torch.from_numpy(control_deltas(delta, recipe.embed_controls, recipe.seed + 1000).astype(np.float32))
        ctrl = ctrl.permute(0, 3, 1, 2).div(255.0)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    losses: list[float] = []
    bar = tqdm(range(recipe.embed_steps), desc="embed watermark", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, len(xc), (recipe.batch_size,), generator=gen)
        widx = torch.randint(0, len(xw), (recipe.marked_batch,), generator=gen)
        v1, v2 = augment(xc[idx], gen), augment(xc[idx], gen)
        kept = [v1, v2]  # anchored to the original embeddings
        if anchored:
            cidx = torch.randint(0, len(ctrl), (recipe.marked_batch,), generator=gen)
            kept.append((xm[widx] + ctrl[cidx]).clamp(0, 1))
        inputs = torch.cat([*kept, xw[widx], xk])
        out = model(norm(inputs))
        b, m, n_kept = recipe.batch_size, recipe.marked_batch, sum(len(t) for t in kept)
        z1, z2 = out[:b], out[b:2 * b]
        zw, zk = out[n_kept:n_kept + m], out[n_kept + m:]
        with torch.no_grad():
            anchor = F.normalize(original(norm(torch.cat(kept))), dim=1)
        dev = (F.normalize(out[:n_kept], dim=1) - anchor).pow(2).sum(1)
        l_cl = nt_xent(z1, z2, recipe.temperature)
        l_pull = (1 - (F.normalize(zw, dim=1) * F.normalize(zk, dim=1)).sum(1)).mean()
        l_anchor = dev[:2 * b].mean()
        loss = l_cl + recipe.alpha_pull * l_pull + recipe.beta_anchor * l_anchor
        if anchored:
            loss = loss + recipe.control_anchor * dev[2 * b:].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(pull=f"{float(l_pull):.3f}", anchor=f"{float(l_anchor):.4f}")
    model.eval()
    for p in original.parameters():
        p.requires_grad_(True)
    return marked_net, losses


# --- stage 3: verify ----------------------------------------------------------------------

@dataclass
class Statistics:
    """One model's verification statistics for the real delta and the controls."""

    observed: float
    controls: list[float]
    per_probe: list[float]
    n_queries: int
    summary: dict[str, float] = field(default_factory=dict)  # mode-specific descriptive figures


def white_box_statistics(handle: EncoderHandle, key: np.ndarray, probes: np.ndarray, delta: np.ndarray,
                         controls: np.ndarray) -> Statistics:
    """Mean paired shift towards the key for delta and each control, through ``handle``
    (every query a PNG-encoded image; 1 + n + (C + 1) n queries)."""
    n = len(probes)
    batch = [png_bytes(key), *(png_bytes(p) for p in probes)]
    for d in [delta, *controls]:
        batch += [png_bytes(im) for im in apply_delta(probes, d)]
    emb = l2_normalise(np.asarray(handle.encode_images(batch, kind="watermark"), dtype=np.float32))
    if emb.shape[0] != len(batch) or not np.all(np.isfinite(emb)):
        raise ValueError(f"suspect answered {emb.shape} for {len(batch)} watermark probes or non-finite values")
    e_key = emb[0]
    clean_sim = emb[1:1 + n] @ e_key
    shifts = []
    for j in range(1 + len(controls)):
        pert = emb[1 + n + j * n:1 + n + (j + 1) * n]
        shifts.append(pert @ e_key - clean_sim)
    return Statistics(float(np.mean(shifts[0])), [float(np.mean(s)) for s in shifts[1:]],
                      [float(v) for v in shifts[0]], len(batch))


def class_scores(classifier: Any, features: np.ndarray) -> np.ndarray:
    """Class probabilities (n, classes) of a downstream classifier
    (:class:`audit_lib.methods.downstream.DownstreamClassifier`) on (n, d) features: what a
    downstream API that returns scores answers."""
    import torch

    x = l2_normalise(np.asarray(features, dtype=np.float32))
    if classifier.recipe.kind == "linear":
        return np.asarray(classifier.module.predict_proba(x), dtype=np.float64)
    classifier.module.eval()
    with torch.inference_mode():
        return torch.softmax(classifier.module(torch.from_numpy(x)), dim=1).double().numpy()


def _as_scores(answers: np.ndarray, n: int) -> np.ndarray:
    out = np.asarray(answers)
    if out.ndim == 1 and out.shape == (n,):  # a label-only API: one-hot scores
        labels = out.astype(np.int64)
        if labels.min() < 0:
            raise ValueError("the suspect's classifier answered a negative class label")
        out = np.eye(int(labels.max()) + 1)[labels]
    if out.ndim != 2 or out.shape[0] != n or not np.all(np.isfinite(out)):
        raise ValueError(f"the suspect's classifier answered {out.shape} for {n} images (expected labels (n,) "
                         "or finite class scores (n, classes))")
    return out.astype(np.float64)


def black_box_statistics(classify: Callable[[list[bytes]], np.ndarray], key: np.ndarray, probes: np.ndarray,
                         delta: np.ndarray, controls: np.ndarray) -> Statistics:
    """Mean paired shift of the key class's log score, for delta and each control, through the
    suspect's downstream classifier (``classify`` maps PNG images to class scores (n, classes),
    or to labels (n,) for a label-only API, taken as one-hot scores). The key's class k is
    the one the classifier gives the key; per probe the shift is
    log s_k(x_i + d) - log s_k(x_i), scores floored at ``SCORE_FLOOR`` (1 + n + (C + 1) n
    queries). The paper's watermark rate (share of marked probes labelled k) and the clean
    probes' rate are kept as summary."""
    n = len(probes)
    batch = [png_bytes(key), *(png_bytes(p) for p in probes)]
    for d in [delta, *controls]:
        batch += [png_bytes(im) for im in apply_delta(probes, d)]
    scores = _as_scores(classify(batch), len(batch))
    k = int(np.argmax(scores[0]))
    labels = scores.argmax(axis=1)
    log_k = np.log(np.clip(scores[:, k], SCORE_FLOOR, None))
    clean = log_k[1:1 + n]
    shifts, rates = [], []
    for j in range(1 + len(controls)):
        block = slice(1 + n + j * n, 1 + n + (j + 1) * n)
        shifts.append(log_k[block] - clean)
        rates.append(float(np.mean(labels[block] == k)))
    summary = {"key_class": k, "watermark_rate": rates[0], "clean_rate": float(np.mean(labels[1:1 + n] == k)),
               "flips_into_key_class": int(np.sum((labels[1:1 + n] != k) & (labels[1 + n:1 + 2 * n] == k))),
               "control_watermark_rate_max": max(rates[1:], default=0.0)}
    return Statistics(float(np.mean(shifts[0])), [float(np.mean(s)) for s in shifts[1:]],
                      [float(v) for v in shifts[0]], len(batch), summary)


def decide(stats: Statistics, independent_scores: Sequence[float], *, mode: str, alpha: float,
           key_sha256: str, commitment_sha256: str, parameters: dict[str, Any] | None = None) -> FindingResult:
    """The calibrated finding: the observed statistic against the independent encoders'
    statistics for the real delta and against the suspect's own control perturbations;
    p = max of the two p-values (both nulls must be rejected)."""
    from audit_lib.stats import clopper_pearson_upper, rank_or_tail_test

    if not independent_scores:
        raise ValueError("watermark decision: no independent-encoder statistics were committed at enrolment")
    vs_independent = rank_or_tail_test(stats.observed, independent_scores, alpha)
    vs_controls = rank_or_tail_test(stats.observed, stats.controls, alpha)
    p = max(vs_independent.p_value, vs_controls.p_value)
    what = "mean paired similarity shift towards the key" if mode == "white_box" else \
        "mean paired shift of the key class's log score through the downstream classifier"
    tails = [name for name, t in (("independent encoders", vs_independent), ("controls", vs_controls))
             if t.how == "t_tail"]
    assumptions = [
        "under H0 the suspect's response to our watermark is exchangeable with independently trained "
        "encoders' response to it, and with its own response to control perturbations of the same norm",
        "the key, perturbation, probes, controls and alpha were committed before the suspect was queried "
        "(commitment hash above)",
        "the suspect's answers are its genuine embeddings (or classifier outputs) for the pixels sent"]
    if tails:
        assumptions.append(f"the null statistics of the {' and the '.join(tails)} are roughly normal (too few "
                           "for a rank p-value to reach alpha, so a Student-t predictive tail was used)")
    return FindingResult(
        method=METHOD, method_version=METHOD_VERSION,
        hypothesis="H0: the suspect was not derived from our watermarked encoder (it responds to our "
                   "watermark no more than an independently trained encoder does, or no more than to a "
                   "control perturbation of equal norm)",
        statistic=stats.observed,
        null_description=(f"{what}: the real watermark on {len(independent_scores)} independently trained "
                          f"encoders ({vs_independent.how} p {vs_independent.p_value:.3g}) and "
                          f"{len(stats.controls)} control perturbations of equal norm on the suspect "
                          f"({vs_controls.how} p {vs_controls.p_value:.3g}); p is the larger"),
        p_value=p, alpha=alpha, decision="positive" if p <= alpha else "negative",
        effect_size=vs_independent.effect_size,
        parameters=dict(parameters or {}, mode=mode),
        details={"observed": stats.observed, "null_scores": [*stats.controls, *independent_scores],
                 "n_queries": stats.n_queries, "mode": mode, "shifts": stats.per_probe, **stats.summary,
                 "control_scores": stats.controls,
                 "independent_scores": [float(v) for v in independent_scores],
                 "p_independent": vs_independent.p_value, "p_independent_how": vs_independent.how,
                 "p_independent_rank": vs_independent.p_rank, "p_controls": vs_controls.p_value,
                 "p_controls_how": vs_controls.how, "p_controls_rank": vs_controls.p_rank,
                 "key_sha256": key_sha256, "commitment_sha256": commitment_sha256,
                 "min_attainable_p": max(1 / (len(independent_scores) + 1), 1 / (len(stats.controls) + 1)),
                 "independent_false_alarm_bound": clopper_pearson_upper(0, len(independent_scores)),
                 "assumptions": assumptions},
    )


def key_sha256(key: np.ndarray) -> str:
    """sha256 of the key image's PNG bytes (what is sent to a suspect)."""
    return hashlib.sha256(png_bytes(np.asarray(key, dtype=np.uint8))).hexdigest()


def verify_watermark(suspect_handle: EncoderHandle, artefact: Any, *, alpha: float | None = None,
                     classify: Callable[[list[bytes]], np.ndarray] | None = None) -> FindingResult:
    """Verify a committed watermark artefact (:class:`audit_lib.ownership.Artefact`) on a
    suspect: white-box through ``suspect_handle``, or black-box when ``classify`` (the
    suspect's downstream classifier, PNG images -> labels) is given."""
    t, spec = artefact.tensors, artefact.spec
    alpha = float(spec.get("alpha", 0.01) if alpha is None else alpha)
    args = (t["key"], t["probes"], t["delta"], t["controls"])
    if classify is None:
        stats = white_box_statistics(suspect_handle, *args)
        mode, independent = "white_box", spec.get("independent_white_box", [])
    else:
        stats = black_box_statistics(classify, *args)
        mode, independent = "black_box", spec.get("independent_black_box", [])
    return decide(stats, independent, mode=mode, alpha=alpha, key_sha256=spec["key_sha256"],
                  commitment_sha256=artefact.commitment_sha256,
                  parameters={"recipe": spec.get("recipe", {}), "artefact_id": artefact.id,
                              "eps": f"{spec.get('recipe', {}).get('eps_levels', 8)}/255"})


def plot_shift(result: FindingResult, path: Any, *, title: str | None = None) -> None:
    """The observed statistic against the control and independent-encoder nulls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.details
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.hist(d["control_scores"], bins=20, alpha=0.6, label=f"controls on suspect ({len(d['control_scores'])})")
    if d["independent_scores"]:
        ax.hist(d["independent_scores"], bins=10, alpha=0.6,
                label=f"independent encoders ({len(d['independent_scores'])})")
    ax.axvline(d["observed"], color="red", linewidth=2, label=f"observed (p = {result.p_value:.3g})")
    ax.set_xlabel("mean shift towards the key" if d["mode"] == "white_box"
                  else "mean shift of the key class's log score")
    ax.set_ylabel("count")
    ax.set_title(title or f"AWEncoder {d['mode'].replace('_', '-')} verification")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- enrolment (stages 1 and 2 plus calibration; committed by the caller) ---------------

@dataclass
class Enrolment:
    """The marked network and the artefact to commit (arrays + JSON spec)."""

    marked: Any  # audit_lib.encoders.architectures.Network
    tensors: dict[str, np.ndarray]
    spec: dict[str, Any]
    losses: list[float]


def select_images(pool: np.ndarray, labels: np.ndarray | None, recipe: WatermarkRecipe
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """Key, marked set and probes drawn without overlap from ``pool`` (seeded). Probes come
    from classes other than the key's when labels are known (so a hit is not the probe's own
    class)."""
    need = 1 + recipe.n_marked + recipe.n_probes
    if len(pool) < need:
        raise ValueError(f"watermark: the image pool has {len(pool)} images, {need} are needed")
    order = np.random.default_rng(recipe.seed).permutation(len(pool))
    key_idx = int(order[0])
    key_label = int(labels[key_idx]) if labels is not None else None
    marked = order[1:1 + recipe.n_marked]
    rest = order[1 + recipe.n_marked:]
    if labels is not None:
        rest = rest[np.asarray(labels)[rest] != key_label]
    if len(rest) < recipe.n_probes:
        raise ValueError(f"watermark: only {len(rest)} probe candidates outside the key's class")
    probes = rest[:recipe.n_probes]
    return pool[key_idx], pool[marked], pool[probes], key_label


@dataclass
class TrainedWatermark:
    """Stages 1 and 2: the key, marked set, probes, perturbation and the marked network."""

    marked: Any  # audit_lib.encoders.architectures.Network
    key: np.ndarray
    key_label: int | None
    marked_images: np.ndarray
    probes: np.ndarray
    delta: np.ndarray
    losses: list[float]


def train_watermark(network: Any, clean: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray | None = None, *,
                    recipe: WatermarkRecipe = WatermarkRecipe(), shadows: Sequence[Any] = (),
                    shapers: Sequence[Any] = (), progress: bool = True) -> TrainedWatermark:
    """Generate the watermark on ``network`` (the owned encoder E_0; with ``shadows``, its
    stolen copies, and ``shapers``, independent encoders, as :func:`generate_delta` says) and
    embed it by fine-tuning on ``clean`` images. ``pool`` supplies the key, the marked set
    and the held-out probes (disjoint from ``clean``)."""
    if (len(shadows), len(shapers)) != (recipe.shadow_copies, recipe.shaping_independents):
        raise ValueError(f"watermark: the recipe asks for {recipe.shadow_copies} shadow copies and "
                         f"{recipe.shaping_independents} shaping independents, {len(shadows)} and {len(shapers)} given")
    key, marked, probes, key_label = select_images(pool, pool_labels, recipe)
    log.info("watermark: generating the perturbation on %d marked images (%d shadow copies, %d shaping "
             "independents)", len(marked), len(shadows), len(shapers))
    delta = generate_delta(network, marked, key, recipe, shadows=shadows, shapers=shapers)
    marked_net, losses = embed_watermark(network, clean, marked, key, delta, recipe, progress=progress)
    return TrainedWatermark(marked_net, key, key_label, marked, probes, delta, losses)


def calibrate_watermark(trained: TrainedWatermark, *, recipe: WatermarkRecipe = WatermarkRecipe(),
                        alpha: float = 0.01, independents: Sequence[EncoderHandle] = (),
                        independent_classifiers: Sequence[Callable[[list[bytes]], np.ndarray]] = ()) -> Enrolment:
    """The artefact to commit: controls of equal norm, and the real perturbation's
    statistics on independently trained encoders (handles; for the black-box mode their
    downstream classifiers), with the test's description and alpha."""
    key, probes, delta = trained.key, trained.probes, trained.delta
    controls = control_deltas(delta, recipe.n_controls, recipe.seed + 1)
    none = np.zeros((0, *delta.shape), dtype=np.int8)
    white = [white_box_statistics(h, key, probes, delta, none).observed for h in independents]
    black = [black_box_statistics(c, key, probes, delta, none).observed for c in independent_classifiers]
    spec = {"method": METHOD, "method_version": METHOD_VERSION, "recipe": recipe.as_dict(), "alpha": alpha,
            "eps": f"{recipe.eps_levels}/255", "key_sha256": key_sha256(key), "key_label": trained.key_label,
            "statistic": {"white_box": "mean_i cos(E(x_i+delta), E(key)) - cos(E(x_i), E(key))",
                          "black_box": "mean_i log s_k(x_i+delta) - log s_k(x_i), k = the key's class"},
            "null": "controls of equal norm on the suspect + real delta on independent encoders; "
                    "p = (1 + #{null >= observed}) / (N + 1)",
            "independent_white_box": white, "independent_black_box": black,
            "independent_versions": [h.model_version for h in independents]}
    tensors = {"key": np.asarray(key, np.uint8), "delta": delta, "controls": controls,
               "probes": np.asarray(probes, np.uint8), "marked": np.asarray(trained.marked_images, np.uint8)}
    return Enrolment(trained.marked, tensors, spec, trained.losses)


SPEC = register(MethodSpec(
    name=METHOD, version=METHOD_VERSION, area="ownership",
    hypothesis="H0: the suspect was not derived from the owner's watermarked encoder",
    access=frozenset({"image"}), run=verify_watermark,
    title="Watermark check (AWEncoder)",
    question="Does the suspect model carry the owner's hidden watermark?",
    how=("The owner embedded a secret watermark before release: a small, invisible image "
         "perturbation that moves a marked model's embeddings towards a secret key image. The "
         "suspect is shown probe images with and without the perturbation, and the shift "
         "towards the key is measured. The same shift is measured for control perturbations "
         "and for independently trained models: that is the comparison population."),
    reference=("T. Zhang, H. Wu, X. Lu, G. Sun: \"AWEncoder: Adversarial Watermarking Pre-trained "
               "Encoders in Contrastive Learning\", arXiv:2208.03948, 2022."),
    assumptions=("the key, perturbation and probes were fixed and committed before the suspect was queried",),
    task="audit_lib.pipelines.ownership:watermark_task", figures="audit_lib.reports.figures:watermark_figures",
    tables="audit_lib.reports.tables:watermark_table", order=30,
))
