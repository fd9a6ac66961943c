"""Evaluation of the privacy audits on the reference zoo's labelled members and non-members.

IDIA on the tiny CLIP: each of the 40 face identities (members named in training
captions, non-members never named) with its held-out photos (never trained on, m >= 3),
plus "impostor" nulls: every person's photos audited under a random name the model never
saw, which is H0 by construction and gives many more nulls to check the p-values on.
Reported at the published tau and at our calibrated alpha: TPR, FPR with its exact
Clopper-Pearson upper bound, accuracy, and a KS test of the null p-values against
uniform.

EncoderMI on the overfitted SimCLR target: T, V and S trained on the shadow encoder only
(shadow members vs shadow non-members); the target's non-members are split at random, once,
into reference non-members (the calibration set) and test non-members; nothing is tuned
on the target. Reported: ROC AUC, TPR at 1% and 10% FPR, accuracy at the published cut,
per-image calibrated TPR/FPR at alpha, per-collection Mann-Whitney decisions, and the
query cost. Figures go to docs/ and the data directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit_lib.encoders.base import EncoderHandle, WrappingHandle
from audit_lib.imaging import png_bytes
from audit_lib.stats import clopper_pearson_upper, roc_auc, tpr_at_fpr

log = logging.getLogger(__name__)

RULES = ("T", "V", "S")


class CountingHandle(WrappingHandle):
    """An in-memory query cache in front of a handle, counting what reaches the model per
    kind: the evaluation's stand-in for the store's cache (same keys: kind, input sha256)."""

    def __init__(self, inner: EncoderHandle) -> None:
        super().__init__(inner)
        self._memo: dict[tuple[str, str], np.ndarray] = {}
        self.sent: dict[str, int] = {}
        self.asked: dict[str, int] = {}

    def _through(self, keys: list[bytes], kind: str, call: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        hashes = [hashlib.sha256(k).hexdigest() for k in keys]
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if (kind, h) not in self._memo:
                first.setdefault(h, i)
        todo = list(first.values())
        if todo:
            emb = np.asarray(call(todo), dtype=np.float32)
            for i, v in zip(todo, emb):
                self._memo[(kind, hashes[i])] = v
        self.asked[kind] = self.asked.get(kind, 0) + len(keys)
        self.sent[kind] = self.sent.get(kind, 0) + len(todo)
        if not keys:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.stack([self._memo[(kind, h)] for h in hashes])

    def encode_images(self, images: Sequence[bytes], *, kind: str = "image") -> np.ndarray:
        images = list(images)
        return self._through(images, kind, lambda idx: self.inner.encode_images([images[i] for i in idx], kind=kind))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._through([t.encode() for t in texts], "text",
                             lambda idx: self.inner.encode_texts([texts[i] for i in idx]))


def roc_curve(pos: Sequence[float], neg: Sequence[float]) -> tuple[list[float], list[float]]:
    """(fpr, tpr) over every threshold, predicting member when score >= threshold."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    thresholds = np.unique(np.r_[pos, neg])[::-1]
    fpr = [0.0] + [float(np.mean(neg >= t)) for t in thresholds]
    tpr = [0.0] + [float(np.mean(pos >= t)) for t in thresholds]
    return fpr, tpr


def _rates(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp = int(np.sum(pred & truth)), int(np.sum(pred & ~truth))
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    return {"tpr": tp / n_pos if n_pos else None, "fpr": fp / n_neg if n_neg else None,
            "fp": fp, "n_neg": n_neg, "tp": tp, "n_pos": n_pos,
            "fpr_upper95": clopper_pearson_upper(fp, n_neg) if n_neg else None,
            "accuracy": float(np.mean(pred == truth))}


def _ks_uniform(p: Sequence[float]) -> dict[str, float]:
    from scipy.stats import kstest

    p = np.asarray(p, float)
    res = kstest(p, "uniform")
    return {"n": int(p.size), "ks_statistic": float(res.statistic), "ks_p_value": float(res.pvalue),
            "share_p_le_0.05": float(np.mean(p <= 0.05)), "share_p_le_0.5": float(np.mean(p <= 0.5)),
            "median": float(np.median(p))}


# --- IDIA ------------------------------------------------------------------------------

@dataclass
class IdiaEval:
    """Per-case outcomes and the summary table rows."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _sent(handle: EncoderHandle) -> dict[str, int]:
    """What a counting handle sent per kind so far (empty for any other handle)."""
    return dict(handle.sent) if isinstance(handle, CountingHandle) else {}


def evaluate_idia(handle: EncoderHandle, people: Sequence[Any], *, n_candidates: int = 1000, tau: int = 1,
                  alpha: float = 0.05, impostors_per_person: int = 3, progress: bool = True) -> IdiaEval:
    """Run IDIA for every zoo person (``ZooPerson``: name, sex, member, heldout_photos) and
    for ``impostors_per_person`` random names per person on that person's photos."""
    from tqdm import tqdm

    from audit_lib.methods.identity_inference import run_idia
    from audit_lib.names import decoy_names

    real_names = [p.name for p in people]
    jobs: list[tuple[Any, str, str]] = [(p, p.name, "member" if p.member else "non-member") for p in people]
    for p in people:
        fakes = decoy_names(impostors_per_person, sex=p.sex, seed=9001 + hash_int(p.person_id),
                            exclude=real_names)
        jobs += [(p, f, "impostor") for f in fakes]
    out = IdiaEval()
    for person, name, label in tqdm(jobs, desc="IDIA", disable=not progress):
        photos = [Path(x).read_bytes() for x in person.heldout_photos]
        sent_before = _sent(handle)
        f = run_idia(handle, photos, name, sex=person.sex, n_candidates=n_candidates, tau=tau, alpha=alpha)
        out.cases.append({"person": person.person_id, "label": label, "name_is_true": label != "impostor",
                          "member": label == "member", "p_value": f.p_value,
                          "calibrated": f.decision == "positive",
                          "published": f.details["published_decision"] == "member",
                          "n_correct": f.details["n_correct"], "decoy_rank": f.details["decoy_rank"],
                          "n_images": len(photos), "caption_mode": getattr(person, "caption_mode", None),
                          "text_sent": _sent(handle).get("text", 0) - sent_before.get("text", 0),
                          "image_sent": _sent(handle).get("image", 0) - sent_before.get("image", 0)})
    truth = np.array([c["member"] for c in out.cases])
    real = np.array([c["label"] != "impostor" for c in out.cases])
    summary: dict[str, Any] = {"n_members": int(truth.sum()), "n_nonmembers": int((real & ~truth).sum()),
                               "n_impostors": int((~real).sum()), "n_candidates": n_candidates,
                               "tau": tau, "alpha": alpha,
                               "photos_per_person": sorted({c["n_images"] for c in out.cases})}
    for rule in ("published", "calibrated"):
        pred = np.array([c[rule] for c in out.cases])
        summary[rule] = _rates(pred[real], truth[real])
        summary[rule]["impostor_fpr"] = _rates(pred[~real], truth[~real])["fpr"] if (~real).any() else None
        summary[rule]["impostor_fpr_upper95"] = _rates(pred[~real], truth[~real])["fpr_upper95"] \
            if (~real).any() else None
    null_p = [c["p_value"] for c in out.cases if not c["member"]]
    summary["null_p_uniformity"] = _ks_uniform(null_p)
    summary["member_p_values"] = [c["p_value"] for c in out.cases if c["member"]]
    out.summary = summary
    return out


def hash_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


# --- EncoderMI -------------------------------------------------------------------------

@dataclass
class MiSplit:
    """The image collections of one EncoderMI evaluation (PNG bytes)."""

    shadow_members: list[bytes]
    shadow_nonmembers: list[bytes]
    members: list[bytes]
    test_nonmembers: list[bytes]
    references: list[bytes]


def mi_split(manifest: Any, images: Any, *, n_each: int = 250, n_references: int = 250,
             seed: int = 0) -> MiSplit:
    """Draw the evaluation's images from the zoo's splits (random, seeded, fixed before
    anything is scored): shadow members / non-members from the shadow entry, target
    members, and the target's non-members divided into test non-members and references.
    A zoo without a shadow entry (the ``demo`` profile) gives no shadow images."""
    rng = np.random.default_rng(seed)
    target = manifest.by_role("membership-target")[0]
    shadows = manifest.by_role("membership-shadow")

    def pick(idx: Sequence[int], n: int) -> list[int]:
        idx = list(idx)
        return sorted(int(i) for i in rng.choice(idx, size=min(n, len(idx)), replace=False))

    non = list(rng.permutation(target.splits["nonmembers"]))
    n_ref = min(n_references, len(non) // 2)
    refs, test_non = sorted(non[:n_ref]), sorted(non[n_ref:n_ref + n_each])
    as_png = (lambda idx: [png_bytes(images.x_train[i]) for i in idx])
    shadow = ([as_png(pick(shadows[0].splits[k], n_each)) for k in ("members", "nonmembers")] if shadows
              else [[], []])
    return MiSplit(shadow_members=shadow[0], shadow_nonmembers=shadow[1],
                   members=as_png(pick(target.splits["members"], n_each)),
                   test_nonmembers=as_png(test_non), references=as_png(refs))


def train_shadow_classifiers(shadow_handle: EncoderHandle, members: Sequence[bytes], nonmembers: Sequence[bytes], *,
                             n_views: int = 10, seed: int = 0, save: bool = True) -> dict[str, Any]:
    """Train T, V and S on the shadow encoder's members vs non-members and (``save``) keep
    them where :func:`~audit_lib.methods.membership_inference.load_default_classifier`
    finds them."""
    from audit_lib.methods.membership_inference import default_classifier_path, view_features
    from audit_lib.methods.mi_classifiers import train_classifier

    pos = view_features(shadow_handle, members, n_views)
    neg = view_features(shadow_handle, nonmembers, n_views)
    meta = {"shadow_model_version": shadow_handle.model_version, "n_views": n_views}
    out = {}
    for rule in RULES:
        clf = train_classifier(rule, pos, neg, n_views=n_views, seed=seed, meta=meta)
        if save:
            clf.save(default_classifier_path(rule, n_views))
        out[rule] = clf
    return out


def evaluate_encodermi(target_handle: EncoderHandle, classifiers: dict[str, Any], split: MiSplit, *, n_views: int = 10,
                       alpha: float = 0.05, collection_size: int = 10, seed: int = 0) -> dict[str, Any]:
    """Score the target's members, test non-members and references with each rule."""
    from audit_lib.methods.membership_inference import view_features
    from audit_lib.stats import empirical_p_value, mann_whitney_greater

    f_mem = view_features(target_handle, split.members, n_views)
    f_non = view_features(target_handle, split.test_nonmembers, n_views)
    f_ref = view_features(target_handle, split.references, n_views)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"n_members": len(split.members), "n_test_nonmembers": len(split.test_nonmembers),
                           "n_references": len(split.references), "n_views": n_views, "alpha": alpha,
                           "queries_per_image": n_views, "rules": {}}
    for rule, clf in classifiers.items():
        s_mem, s_non, s_ref = clf.score(f_mem), clf.score(f_non), clf.score(f_ref)
        pub_mem, pub_non = clf.published_member(s_mem), clf.published_member(s_non)
        p_mem = np.array([empirical_p_value(s, s_ref) for s in s_mem])
        p_non = np.array([empirical_p_value(s, s_ref) for s in s_non])
        truth = np.r_[np.ones(len(s_mem), bool), np.zeros(len(s_non), bool)]
        calibrated = _rates(np.r_[p_mem <= alpha, p_non <= alpha], truth)
        # collections: a data owner's claim of `collection_size` images at once
        def collections(scores: np.ndarray) -> list[float]:
            order = rng.permutation(len(scores))
            groups = [order[i:i + collection_size] for i in range(0, len(order) - collection_size + 1,
                                                                   collection_size)]
            return [mann_whitney_greater(scores[g], s_ref)[1] for g in groups]
        mw_mem, mw_non = collections(s_mem), collections(s_non)
        fpr, tpr = roc_curve(s_mem, s_non)
        out["rules"][rule] = {
            "auc": roc_auc(s_mem, s_non), "tpr_at_1pct_fpr": tpr_at_fpr(s_mem, s_non, 0.01),
            "tpr_at_10pct_fpr": tpr_at_fpr(s_mem, s_non, 0.10),
            "published_threshold": clf.threshold,
            "published": _rates(np.r_[pub_mem, pub_non], truth),
            "calibrated_per_image": calibrated,
            "nonmember_p_uniformity": _ks_uniform(p_non),
            "collections": {"size": collection_size,
                            **_rates(np.r_[np.array(mw_mem) <= alpha, np.array(mw_non) <= alpha],
                                     np.r_[np.ones(len(mw_mem), bool), np.zeros(len(mw_non), bool)])},
            "roc": {"fpr": fpr, "tpr": tpr},
            "scores": {"members": s_mem.tolist(), "nonmembers": s_non.tolist(), "references": s_ref.tolist()},
            "p_nonmembers": p_non.tolist(),
        }
    return out


# --- figures and table -----------------------------------------------------------------

def save_figures(result: dict[str, Any], dirs: Sequence[Path]) -> list[Path]:
    """ROC and score-distribution PNGs (matplotlib, Agg) into each of ``dirs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    figs: dict[str, Any] = {}
    mi = result.get("encodermi")
    if mi:
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        for rule, r in mi["rules"].items():
            ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], label=f"EncoderMI-{rule} (AUC {r['auc']:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set(xlabel="false positive rate (target non-members)", ylabel="true positive rate (members)",
               title="EncoderMI on the overfitted target")
        ax.legend(loc="lower right", fontsize=8)
        figs["privacy-encodermi-roc.png"] = fig
        fig, axes = plt.subplots(1, len(mi["rules"]), figsize=(4 * len(mi["rules"]), 3.2))
        for ax, (rule, r) in zip(np.atleast_1d(axes), mi["rules"].items()):
            sc = r["scores"]
            bins = np.linspace(min(map(min, sc.values())), max(map(max, sc.values())), 30)
            ax.hist(sc["references"], bins=bins, alpha=0.5, density=True, label="reference non-members")
            ax.hist(sc["nonmembers"], bins=bins, histtype="step", lw=1.5, density=True, label="test non-members")
            ax.hist(sc["members"], bins=bins, alpha=0.5, density=True, label="members")
            ax.set(title=f"EncoderMI-{rule} score", xlabel="score")
        np.atleast_1d(axes)[0].legend(fontsize=7)
        fig.tight_layout()
        figs["privacy-encodermi-scores.png"] = fig
    idia = result.get("idia")
    if idia:
        cases = idia["cases"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        groups = {"members": [c for c in cases if c["member"]],
                  "non-members": [c for c in cases if c["label"] == "non-member"],
                  "impostor names": [c for c in cases if c["label"] == "impostor"]}
        bins = np.arange(0, 23) - 0.5
        for label, cs in groups.items():
            axes[0].hist([c["n_correct"] for c in cs], bins=bins, alpha=0.55, label=label)
        axes[0].axvline(idia["summary"]["tau"] - 0.5, color="k", ls="--", lw=1)
        axes[0].set(xlabel="templates correct (of 21)", ylabel="cases", title="IDIA: published statistic")
        axes[0].legend(fontsize=7)
        p_bins = np.linspace(0, 1, 21)
        for label, cs in groups.items():
            axes[1].hist([c["p_value"] for c in cs], bins=p_bins, alpha=0.55, label=label)
        axes[1].set(xlabel="decoy-rank p-value", title="IDIA: calibrated p-values")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        figs["privacy-idia-scores.png"] = fig
    if mi or idia:
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        grid = np.linspace(0, 1, 101)
        ax.plot(grid, grid, ":", color="grey", lw=1, label="uniform")
        if idia:
            p = np.sort([c["p_value"] for c in idia["cases"] if not c["member"]])
            ax.step(p, np.arange(1, p.size + 1) / p.size, where="post", label="IDIA nulls")
        if mi:
            for rule, r in mi["rules"].items():
                p = np.sort(r["p_nonmembers"])
                ax.step(p, np.arange(1, p.size + 1) / p.size, where="post", label=f"EncoderMI-{rule} non-members")
        ax.set(xlabel="p", ylabel="share of null cases with p-value <= p", title="Null p-values (ECDF)")
        ax.legend(fontsize=7)
        figs["privacy-null-pvalues.png"] = fig
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            path = d / name
            fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
            written.append(path)
    for fig in figs.values():
        plt.close(fig)
    return written


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}%"


def table_lines(result: dict[str, Any]) -> list[str]:
    """The evaluation table as text lines."""
    lines: list[str] = []
    idia = result.get("idia")
    if idia:
        s = idia["summary"]
        lines.append(f"IDIA on {result.get('idia_model', 'the tiny CLIP')}: {s['n_members']} members, "
                     f"{s['n_nonmembers']} non-members, {s['n_impostors']} impostor-name nulls; "
                     f"{s['n_candidates']} candidate names, photos per person {s['photos_per_person']}")
        lines.append(f"  {'decision':<22}{'TPR':>8}{'FPR':>8}{'FPR<= (95%)':>13}{'accuracy':>10}"
                     f"{'impostor FPR':>14}{'<= (95%)':>10}")
        for rule, label in (("published", f"published tau={s['tau']}"),
                            ("calibrated", f"calibrated p<={s['alpha']}")):
            r = s[rule]
            lines.append(f"  {label:<22}{_pct(r['tpr']):>8}{_pct(r['fpr']):>8}{_pct(r['fpr_upper95']):>13}"
                         f"{_pct(r['accuracy']):>10}{_pct(r['impostor_fpr']):>14}"
                         f"{_pct(r['impostor_fpr_upper95']):>10}")
        u = s["null_p_uniformity"]
        lines.append(f"  null p-values (non-members + impostors, n={u['n']}): KS vs uniform D={u['ks_statistic']:.3f} "
                     f"(p={u['ks_p_value']:.3f}); share p<=0.05 {u['share_p_le_0.05']:.3f}, "
                     f"p<=0.5 {u['share_p_le_0.5']:.3f}")
        c = result.get("idia_cost", {})
        if c:
            per_case = c["text_sent_per_case"]
            big = [x for x in per_case if x > 21]
            lines.append(f"  cost: {c['image_queries_per_subject']:.1f} image queries per subject; text queries "
                         f"sent {c['text_sent']} for {c['text_asked']} asked: {len(big)} case(s) embedded a "
                         f"sex-matched decoy set once ({', '.join(map(str, big))} prompts), every other "
                         f"case a median {float(np.median([x for x in per_case if x <= 21] or [0])):.0f} "
                         f"(its own name in 21 templates)")
    mi = result.get("encodermi")
    if mi:
        lines.append(f"EncoderMI on {result.get('mi_model', 'the SimCLR target')}: {mi['n_members']} members, "
                     f"{mi['n_test_nonmembers']} test non-members, {mi['n_references']} reference "
                     f"non-members, {mi['n_views']} views; rules trained on the shadow encoder only")
        lines.append(f"  {'rule':<6}{'AUC':>7}{'TPR@1%':>9}{'TPR@10%':>9}{'acc (pub.)':>12}"
                     f"{'TPR@a':>8}{'FPR@a':>8}{'FPR<= (95%)':>13}{'KS p':>7}{'coll. TPR':>11}{'coll. FPR':>11}")
        for rule, r in mi["rules"].items():
            cal, col = r["calibrated_per_image"], r["collections"]
            lines.append(f"  {rule:<6}{r['auc']:>7.3f}{_pct(r['tpr_at_1pct_fpr']):>9}{_pct(r['tpr_at_10pct_fpr']):>9}"
                         f"{_pct(r['published']['accuracy']):>12}{_pct(cal['tpr']):>8}{_pct(cal['fpr']):>8}"
                         f"{_pct(cal['fpr_upper95']):>13}{r['nonmember_p_uniformity']['ks_p_value']:>7.3f}"
                         f"{_pct(col['tpr']):>11}{_pct(col['fpr']):>11}")
        lines.append(f"  a = alpha {mi['alpha']} per image (rank p-value among references); collections of "
                     f"{next(iter(mi['rules'].values()))['collections']['size']} images: one-sided Mann-Whitney U")
        lines.append(f"  cost: {mi['queries_per_image']} view queries per image; shadow training "
                     f"{result.get('shadow_queries', 0)} queries on the shadow encoder")
    for t in result.get("targets", []):
        lines.append(f"target: {t['target']}: {'met' if t['met'] else 'NOT met'} ({t['measured']})")
    return lines


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, measured (not tuned for)."""
    out = []
    idia = result.get("idia")
    if idia:
        cal = idia["summary"]["calibrated"]
        out.append({"target": "IDIA TPR >= 0.9 at FPR <= 0.05 (calibrated)",
                    "met": bool(cal["tpr"] >= 0.9 and cal["fpr"] <= 0.05),
                    "measured": f"TPR {cal['tpr']:.3f}, FPR {cal['fpr']:.3f} "
                                f"(upper 95% {cal['fpr_upper95']:.3f})"})
    mi = result.get("encodermi")
    if mi:
        aucs = {r: v["auc"] for r, v in mi["rules"].items()}
        best = max(aucs.values())
        out.append({"target": "EncoderMI best-rule AUC >= 0.8", "met": best >= 0.8,
                    "measured": ", ".join(f"{r} {a:.3f}" for r, a in aucs.items())})
        if "T" in aucs:
            out.append({"target": "EncoderMI-T within 0.05 of the best rule", "met": best - aucs["T"] <= 0.05,
                        "measured": f"gap {best - aucs['T']:.3f}"})
    return out


def run_evaluation(manifest: Any, *, handle_factory: Callable[[Any], Any] | None = None,
                   n_candidates: int = 1000, tau: int = 1, alpha: float = 0.05, n_views: int = 10,
                   mi_images: int = 250, impostors_per_person: int = 3, figure_dirs: Sequence[Path] = (),
                   parts: Sequence[str] = ("idia", "encodermi"), progress: bool = True) -> dict[str, Any]:
    """The whole evaluation over a zoo manifest; ``handle_factory(entry)`` opens the
    handle of a zoo entry (default: a local checkpoint). Returns a JSON-able dict."""
    from audit_lib.encoders.local import LocalEncoder

    def open_entry(entry: Any) -> CountingHandle:
        inner = handle_factory(entry) if handle_factory else LocalEncoder.from_checkpoint(
            entry.architecture, entry.weights_path)
        return CountingHandle(inner)

    result: dict[str, Any] = {"profile": manifest.profile}
    if "idia" in parts:
        clip_entries = manifest.by_role("identity-target")
        if not clip_entries:
            log.warning("zoo has no identity target: IDIA not evaluated")
        else:
            entry = clip_entries[0]
            h = open_entry(entry)
            idia = evaluate_idia(h, entry.people, n_candidates=n_candidates, tau=tau, alpha=alpha,
                                 impostors_per_person=impostors_per_person, progress=progress)
            result["idia"] = asdict(idia)
            result["idia_model"] = f"{entry.name} ({entry.sha256[:12]})"
            text_sent = [c["text_sent"] for c in idia.cases]
            result["idia_cost"] = {"image_queries_per_subject": h.asked.get("image", 0) / len(idia.cases),
                                   "text_asked": h.asked.get("text", 0), "text_sent": h.sent.get("text", 0),
                                   "text_sent_first": text_sent[0],
                                   "text_sent_rest_mean": float(np.mean(text_sent[1:])) if len(text_sent) > 1 else 0.0,
                                   "text_sent_per_case": text_sent}
    if "encodermi" in parts:
        from audit_lib.zoo.data import load_images

        images = load_images()
        split = mi_split(manifest, images, n_each=mi_images, n_references=mi_images)
        shadow = open_entry(manifest.by_role("membership-shadow")[0])
        classifiers = train_shadow_classifiers(shadow, split.shadow_members, split.shadow_nonmembers,
                                               n_views=n_views)
        target_entry = manifest.by_role("membership-target")[0]
        target = open_entry(target_entry)
        result["encodermi"] = evaluate_encodermi(target, classifiers, split, n_views=n_views, alpha=alpha)
        result["mi_model"] = f"{target_entry.name} ({target_entry.sha256[:12]})"
        result["shadow_queries"] = shadow.sent.get("view", 0)
        result["target_view_queries"] = target.sent.get("view", 0)
    result["targets"] = check_targets(result)
    if figure_dirs:
        result["figures"] = [str(p) for p in save_figures(result, figure_dirs)]
    return result


def write_json(result: dict[str, Any], path: Path) -> Path:
    """The evaluation as JSON (score lists included) for reports and the README."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    return path
