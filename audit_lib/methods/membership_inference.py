"""Membership inference against an image encoder (EncoderMI): was this image used to train it?

Paper: Liu, Jia, Qu, Gong, "EncoderMI: Membership Inference against Pre-trained Encoders
in Contrastive Learning", ACM CCS 2021, arXiv 2108.11023. Signal (§4): an encoder
overfitted by contrastive pre-training returns more similar features for augmented views
of a training member than of a non-member. For an input x with views A_1(x) .. A_n(x)
(n = 10), the feature vector is s = {cos(E(A_i x), E(A_j x)) : i < j} (45 values); the
three published rules (T, V, S) map s to a member decision (``mi_classifiers``).

Calibrated decision on top:
  - per image: p_i = (1 + #{reference scores >= s_i}) / (K + 1), the rank of its score
    among the scores of K known non-members (images that cannot be in the training set)
    on the same model version; Holm's step-down correction over the claimed images;
  - per collection: a one-sided Mann-Whitney U test of the claimed images' scores against
    the reference non-members' scores; the finding's p-value and decision come from it.

Departures: views are drawn with a per-image seed (``views``) so a re-run queries the
same bytes (and hits the cache); the published per-image rule is reported beside the
calibrated decision, not used for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from audit_lib.encoders.base import EncoderHandle
from audit_lib.findings import FindingResult
from audit_lib.method_registry import MethodSpec, SubjectInputs, register
from audit_lib.methods import MethodInputError
from audit_lib.methods.mi_classifiers import RULES, MIClassifier, pairwise_similarities
from audit_lib.methods.views import DEFAULT_RECIPE, VIEWS_VERSION, ViewRecipe, make_views
from audit_lib.stats import empirical_p_value, holm, mann_whitney_greater

METHOD = "encoder_mi"
METHOD_VERSION = "1.0"
MIN_REFERENCES = 10
HYPOTHESIS = ("H0: none of the claimed images was used to train the model; their membership "
              "scores then come from the same distribution as those of the reference "
              "non-member images")
ASSUMPTIONS = [
    "the reference images cannot be in the model's training set (held out or created after "
    "it) and come from the same distribution as the claimed images; a distribution shift "
    "between them invalidates the test",
    "the model version did not change between scoring the claimed and the reference images",
    "scores of different images are independent given the model",
    "a high score means the model is overfitted to the image; a model trained without "
    "overfitting may use an image and still not show it (a negative is not proof of non-use)",
]


def default_classifier_path(rule: str, n_views: int) -> Path:
    """Where ``encoder-audit eval privacy`` (and ``audit privacy``) keep the shadow-trained
    classifier for a rule and view count."""
    from audit_lib.config import get_settings

    return get_settings().data_dir / "privacy" / f"encodermi-{rule}-n{n_views}.safetensors"


def load_default_classifier(rule: str, n_views: int) -> MIClassifier:
    """The shadow-trained classifier kept in the data directory, or a clear error."""
    path = default_classifier_path(rule, n_views)
    if not path.is_file():
        raise MethodInputError(
            f"EncoderMI-{rule}: no classifier trained for {n_views} views at {path}; train it "
            "on the zoo's shadow encoder first (`encoder-audit eval privacy` or "
            "audit_lib.eval.privacy.train_shadow_classifiers)")
    return MIClassifier.load(path)


def view_features(handle: EncoderHandle, images: Sequence[bytes], n_views: int = 10,
                  recipe: ViewRecipe = DEFAULT_RECIPE, *, memo: bool = False) -> np.ndarray:
    """(N, n(n-1)/2) pairwise cosine similarities of each image's seeded views, from one
    batched query of N * n views (``kind="view"``). ``memo``: the views come from the
    process's view memo (``views.make_views``; for the reference non-members, which every
    pair asks for)."""
    if not images:
        return np.zeros((0, n_views * (n_views - 1) // 2))
    views: list[bytes] = []
    for i, img in enumerate(images):
        try:
            views.extend(make_views(img, n_views, recipe, memo=memo))
        except ValueError:
            raise
        except Exception as exc:  # PIL errors on bytes that are not an image
            raise MethodInputError(f"EncoderMI: image {i} cannot be decoded ({exc})") from None
    emb = np.asarray(handle.encode_images(views, kind="view"), dtype=np.float64)
    if emb.shape[0] != len(views):
        raise MethodInputError(f"EncoderMI: {len(views)} views sent, {emb.shape[0]} embeddings back")
    try:
        return np.stack([pairwise_similarities(emb[i * n_views:(i + 1) * n_views])
                         for i in range(len(images))])
    except ValueError as exc:
        raise MethodInputError(f"EncoderMI: {exc}") from None


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def check_inputs(images: Sequence[bytes], reference_nonmembers: Sequence[bytes], *, rule: str,
                 n_views: int, alpha: float, classifier: MIClassifier | None = None) -> MIClassifier:
    """Refuse inputs EncoderMI cannot test (a bad rule, level or view count, too few
    references, a claimed image that is also a reference, rule V or S without a trained
    classifier) and return the classifier to use. Callers run it before opening the model,
    so a refusal costs no query."""
    if rule not in RULES:
        raise MethodInputError(f"EncoderMI: rule {rule!r} is not one of {RULES}")
    if not 0 < alpha < 1:
        raise MethodInputError(f"EncoderMI: alpha = {alpha} is not in (0, 1)")
    if n_views < 2:
        raise MethodInputError(f"EncoderMI: n_views = {n_views}; at least 2 are needed")
    if not images:
        raise MethodInputError("EncoderMI: no claimed images to test")
    if len(reference_nonmembers) < MIN_REFERENCES:
        raise MethodInputError(f"EncoderMI: {len(reference_nonmembers)} reference non-member "
                               f"images; at least {MIN_REFERENCES} are needed to calibrate: register "
                               "more known non-members for the model")
    ref_sha = {_sha(b) for b in reference_nonmembers}
    overlap = [h for h in (_sha(b) for b in images) if h in ref_sha]
    if overlap:
        raise MethodInputError(f"EncoderMI: claimed image {overlap[0][:12]} is also one of the model's "
                               "reference non-members; a reference must be an image the model cannot "
                               "have been trained on: remove it from the reference set or from the claim")
    if classifier is None:
        if rule == "T":
            path = default_classifier_path("T", n_views)
            classifier = MIClassifier.load(path) if path.is_file() else MIClassifier("T", n_views, None)
        else:
            classifier = load_default_classifier(rule, n_views)
    if classifier.rule != rule:
        raise MethodInputError(f"EncoderMI: rule {rule} asked, classifier is for rule {classifier.rule}")
    if classifier.rule == "V" and classifier.n_views != n_views:
        raise MethodInputError(f"EncoderMI-V: classifier trained for {classifier.n_views} views, "
                               f"run asks for {n_views}")
    return classifier


def run_encodermi(handle: EncoderHandle, images: Sequence[bytes], reference_nonmembers: Sequence[bytes], *,
                  rule: str = "T", n_views: int = 10, alpha: float = 0.05,
                  classifier: MIClassifier | None = None) -> FindingResult:
    """Run EncoderMI for a collection of claimed images on one model and return the
    calibrated finding. ``classifier`` is the shadow-trained rule (default: the one kept
    in the data directory; for T, without one only the published cut is missing)."""
    classifier = check_inputs(images, reference_nonmembers, rule=rule, n_views=n_views, alpha=alpha,
                              classifier=classifier)
    claimed_sha = [_sha(b) for b in images]
    version = handle.model_version
    feats = view_features(handle, images, n_views)
    ref_feats = view_features(handle, reference_nonmembers, n_views, memo=True)
    if handle.model_version != version:
        raise MethodInputError("EncoderMI: the model version changed during the run "
                               f"({version[:12]} -> {handle.model_version[:12]}); rerun the audit")
    scores = classifier.score(feats)
    ref_scores = classifier.score(ref_feats)
    p_each = np.array([empirical_p_value(s, ref_scores) for s in scores])
    p_holm, reject = holm(p_each, alpha)
    u, p_mw, effect = mann_whitney_greater(scores, ref_scores)
    published = classifier.published_member(scores)
    per_image = [{"sha256": h, "score": float(s), "p_value": float(p), "p_holm": float(ph),
                  "member": bool(r),
                  "published_member": None if published is None else bool(published[i])}
                 for i, (h, s, p, ph, r) in enumerate(zip(claimed_sha, scores, p_each, p_holm, reject))]
    n_queries = (len(images) + len(reference_nonmembers)) * n_views
    details = {
        "observed": float(np.mean(scores)), "null_scores": [float(x) for x in ref_scores],
        "n_queries": n_queries, "n_image_queries": n_queries,
        "alpha_family": float(p_holm.min()), "assumptions": list(ASSUMPTIONS),
        "rule": rule, "images": per_image, "reference_scores": [float(x) for x in ref_scores],
        "mann_whitney_u": u, "n_claimed": len(images), "n_reference": len(reference_nonmembers),
        "n_members_holm": int(reject.sum()),
        "smallest_holm_p_reachable": min(1.0, len(images) / (len(reference_nonmembers) + 1)),
        "published_threshold": classifier.threshold,
    }
    parameters = {"rule": rule, "n_views": n_views, "alpha": alpha, "views": VIEWS_VERSION,
                  "view_recipe": DEFAULT_RECIPE.as_dict(), "similarity": "cosine",
                  "classifier": {k: v for k, v in classifier.meta.items()
                                 if isinstance(v, (str, int, float, bool)) or v is None}}
    return FindingResult(
        method=METHOD, method_version=METHOD_VERSION, hypothesis=HYPOTHESIS,
        statistic=float(np.mean(scores)),
        null_description=(f"{len(reference_nonmembers)} known non-member reference images scored "
                          f"on the same model version; one-sided Mann-Whitney U (claimed > "
                          f"reference); per image: rank p-value with Holm correction"),
        p_value=p_mw, alpha=alpha, decision="positive" if p_mw <= alpha else "negative",
        effect_size=effect, parameters=parameters, details=details)


def check_subject(inputs: SubjectInputs) -> MIClassifier:
    """The pair task's checks (:func:`check_inputs` on the subject's claimed images and the
    model's reference non-members), run before the model is opened; returns the classifier."""
    p = inputs.params
    return check_inputs(inputs.images, inputs.reference_nonmembers, rule=str(p["membership_rule"]),
                        n_views=int(p["n_views"]), alpha=float(p["alpha"]))


def run_subject(handle: EncoderHandle, inputs: SubjectInputs, prepared: MIClassifier | None = None) -> FindingResult:
    """The pair task's call: :func:`run_encodermi` on the subject's claimed images."""
    p = inputs.params
    return run_encodermi(handle, inputs.images, inputs.reference_nonmembers, rule=str(p["membership_rule"]),
                         n_views=int(p["n_views"]), alpha=float(p["alpha"]), classifier=prepared)


SPEC = register(MethodSpec(
    name=METHOD, version=METHOD_VERSION, area="privacy", hypothesis=HYPOTHESIS, access=frozenset({"image"}),
    run=run_encodermi, aliases=("membership", "membership_inference", "encodermi"),
    title="Membership inference (EncoderMI)",
    question="Were these particular images used to train the encoder?",
    how=("Each image is altered several times (crops, flips, colour changes) and the model's "
         "embeddings of the variants are compared. Encoders tend to give more consistent "
         "embeddings for images they were trained on. The scores of the claimed images are "
         "compared with images that cannot have been in the training data (reference "
         "non-members), per image and as a group (one-sided Mann-Whitney U test)."),
    reference=("H. Liu, J. Jia, W. Qu, N. Z. Gong: \"EncoderMI: Membership Inference against "
               "Pre-trained Encoders in Contrastive Learning\", ACM CCS 2021; arXiv:2108.11023."),
    assumptions=("the reference non-members come from the same kind of images as the claimed images",),
    web_label="Membership inference (were this person's images used in training?)",
    null_in_words="if the model had not been trained on these images", short="membership",
    subject_images="claimed", needs_reference_nonmembers=True, holm_per_image=True,
    check=check_subject, task=run_subject, figures="audit_lib.reports.figures:encoder_mi_figures",
    tables="audit_lib.reports.tables:encoder_mi_table", order=20,
))
