"""Task bodies of the privacy audit: calibration once per model version, then identity and
membership inference per subject x model pair. ``encoder-audit audit privacy`` uses the
same input checks (:func:`check_identity_inputs`, :func:`check_membership_inputs`, both run
before the model is opened) and the same finding annotations (:func:`annotate`).

Each pair task computes one method's finding through the model's evidence-recording
handle and stores it with ``store_finding`` (idempotent per run, method, target and model
version), so a retried task recomputes from the query cache and writes nothing new. The
handles skip cached repeats already recorded in the run's chain (``skip_recorded_repeats``:
EncoderMI's reference views, asked for by every pair, are recorded once per run and process).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from audit_lib.encoders.cache import query_counts, with_query_counts
from audit_lib.pipelines.handles import open_model_handle, query_stats
from audit_lib.pipelines.references import has_reference_nonmembers, holm_references_needed, holm_warning, \
    load_reference_nonmembers
from audit_lib.store import session_scope
from audit_lib.store.models import AuditedModel, DataSubject

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "n_candidates": 1000, "tau": 1, "alpha": 0.05, "seed": 42, "membership_rule": "T",
    "n_views": 10, "pairs_per_task": 1,
}


def chunk_pairs(pairs: list[dict[str, int]], pairs_per_task: int) -> list[list[dict[str, int]]]:
    """Pairs grouped for the mapped tasks: one task instance per ``pairs_per_task`` pairs
    (1: one per pair, each visible and retriable on its own in the UI; more: fewer task
    instances, so a run over thousands of subjects is not dominated by per-task overhead).
    Pairs of one model stay together so a chunk opens one handle."""
    size = max(1, int(pairs_per_task))
    ordered = sorted(pairs, key=lambda p: (p["model_id"], p["subject_id"]))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _model_names(model_ids: Sequence[int], db_url: str | None) -> dict[int, str]:
    with session_scope(db_url) as session:
        return {m: session.get(AuditedModel, m).name for m in model_ids}


def plan_identity_pairs(snapshot: dict[str, Any], versions: Sequence[dict[str, Any]]) -> list[dict[str, int]]:
    """Subject x model pairs for identity inference: models with a text tower, subjects
    with reference photos."""
    pairs = [{"subject_id": s["id"], "model_id": v["model_id"], "model_version_id": v["model_version_id"]}
             for v in versions if v["text"] for s in snapshot["subjects"] if s["n_reference"] > 0]
    no_text = [v["model_id"] for v in versions if not v["text"]]
    log.info("identity inference: %d pairs; models without text (not applicable): %s",
             len(pairs), no_text or "none")
    return pairs


def plan_membership_pairs(snapshot: dict[str, Any], versions: Sequence[dict[str, Any]], *,
                          db_url: str | None = None) -> list[dict[str, int]]:
    """Subject x model pairs for membership inference: subjects with claimed images,
    models with a configured reference non-member set (others are named in the log)."""
    names = _model_names([v["model_id"] for v in versions], db_url)
    ready = [v for v in versions if has_reference_nonmembers(v["model_id"], db_url=db_url)]
    missing = sorted(names[v["model_id"]] for v in versions if v not in ready)
    if missing:
        log.warning("membership inference skipped for models without reference non-members: %s",
                    ", ".join(missing))
    pairs = [{"subject_id": s["id"], "model_id": v["model_id"], "model_version_id": v["model_version_id"]}
             for v in ready for s in snapshot["subjects"] if s["n_claimed"] > 0]
    log.info("membership inference: %d pairs", len(pairs))
    return pairs


def calibrate_version(version: dict[str, Any], run_key: str, params: dict[str, Any] | None = None,
                      *, db_url: str | None = None) -> dict[str, Any]:
    """Null calibration once per model version: embed the views of the model's reference
    non-members (EncoderMI's null population) so that every pair task of the run finds
    them in the query cache. The query cache makes this once per version across runs too.
    Returns ``version`` unchanged (plus the number of null inputs) for the planners.
    """
    p = {**DEFAULT_PARAMS, **(params or {})}
    name = _model_names([version["model_id"]], db_url)[version["model_id"]]
    out = dict(version)
    if not has_reference_nonmembers(version["model_id"], db_url=db_url):
        out["n_null_inputs"] = 0
        log.info("model %s: no reference non-members configured, nothing to calibrate", name)
        return out
    from audit_lib.methods.views import make_views

    refs = load_reference_nonmembers(version["model_id"], db_url=db_url)
    handle = open_model_handle(version["model_id"], run_key, db_url=db_url)
    handle.skip_recorded_repeats = True
    views = [v for img in refs for v in make_views(img, int(p["n_views"]))]
    handle.encode_images(views, kind="view")
    out["n_null_inputs"] = len(refs)
    log.info("model %s version %s: calibrated the membership null on %d reference non-members "
             "(%d views); %s", name, version["version"][:16], len(refs), len(views), query_stats(handle))
    return out


def _subject(session, subject_id: int) -> DataSubject:  # noqa: ANN001 - Session
    from audit_lib.registry import get_subject, require_auditable

    subject = get_subject(session, subject_id)
    require_auditable(subject)
    return subject


def _store(run_key: str, result: Any, pair: dict[str, int], db_url: str | None) -> dict[str, Any]:
    from audit_lib.evidence import start_run, store_finding

    with session_scope(db_url) as session:
        run = start_run(session, run_key, "privacy")
        row, created = store_finding(session, run, result, target_key=f"subject:{pair['subject_id']}",
                                     model_version_id=int(pair["model_version_id"]),
                                     subject_id=int(pair["subject_id"]))
        return {"finding_id": row.id, "created": created, "decision": row.decision,
                "method": row.method, "p_value": row.p_value}


def run_chunk(method: str, chunk: Sequence[dict[str, int]], run_key: str, params: dict[str, Any] | None = None,
              *, db_url: str | None = None) -> list[dict[str, Any]]:
    """Run ``identity`` or ``membership`` inference for each pair of one mapped task's chunk.
    The pair is logged before it runs, so a failure's log names it; a retry finds the
    findings already stored and recomputes nothing new (the query cache answers)."""
    fn = {"identity": identity_pair, "membership": membership_pair}[method]
    out = []
    for k, pair in enumerate(chunk, start=1):
        log.info("%s inference %d/%d: subject %s on model %s", method, k, len(chunk), pair["subject_id"],
                 pair["model_id"])
        out.append(fn(pair, run_key, params, db_url=db_url))
    return out


@contextmanager
def inputs_fail_fast() -> Iterator[None]:
    """A refused input (MethodInputError, RegistryError: a claimed image that is also a
    reference, too few photos, an erased subject) fails the task at once, without the
    retries meant for transient model and API errors. Imports Airflow only when raising."""
    from audit_lib.methods import MethodInputError
    from audit_lib.registry import RegistryError

    try:
        yield
    except (MethodInputError, RegistryError) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


def identity_pair(pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
                  *, db_url: str | None = None) -> dict[str, Any]:
    """Identity inference (IDIA) for one subject on one model; stores the finding."""
    from audit_lib.methods.identity_inference import run_idia
    from audit_lib.registry import subject_image_bytes

    p = {**DEFAULT_PARAMS, **(params or {})}
    with session_scope(db_url) as session:
        subject = _subject(session, pair["subject_id"])
        images = [data for _, data in subject_image_bytes(session, subject, "reference")]
        name, aliases, sex, pseudonym = subject.name, list(subject.aliases or []), subject.sex, subject.pseudonym
    capabilities = _capabilities(pair["model_id"], db_url)
    check_identity_inputs(images, capabilities, alpha=float(p["alpha"]), tau=int(p["tau"]), sex=sex)
    handle = _checked_handle(pair, run_key, db_url)
    since = query_counts(handle)
    result = run_idia(handle, images, name, aliases=aliases, sex=sex, n_candidates=int(p["n_candidates"]),
                      tau=int(p["tau"]), alpha=float(p["alpha"]), seed=int(p["seed"]))
    result = annotate(result, handle, since)
    out = _store(run_key, result, pair, db_url)
    log.info("idia %s on model %s: %d reference photos, %d candidates -> %s (p=%s, statistic=%s); "
             "%s; finding %d %s", pseudonym, pair["model_id"], len(images), int(p["n_candidates"]),
             result.decision, result.p_value, result.statistic, query_stats(handle), out["finding_id"],
             "stored" if out["created"] else "already stored (re-run)")
    return out


def membership_pair(pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
                    *, db_url: str | None = None) -> dict[str, Any]:
    """Membership inference (EncoderMI) of a subject's claimed images on one model."""
    from audit_lib.methods.membership_inference import run_encodermi
    from audit_lib.registry import subject_image_bytes

    p = {**DEFAULT_PARAMS, **(params or {})}
    with session_scope(db_url) as session:
        subject = _subject(session, pair["subject_id"])
        images = [data for _, data in subject_image_bytes(session, subject, "claimed")]
        pseudonym = subject.pseudonym
        model_name = session.get(AuditedModel, int(pair["model_id"])).name
    refs = load_reference_nonmembers(int(pair["model_id"]), db_url=db_url)
    classifier = check_membership_inputs(images, refs, rule=str(p["membership_rule"]), n_views=int(p["n_views"]),
                                         alpha=float(p["alpha"]))
    handle = _checked_handle(pair, run_key, db_url)
    since = query_counts(handle)
    result = run_encodermi(handle, images, refs, rule=str(p["membership_rule"]),
                           n_views=int(p["n_views"]), alpha=float(p["alpha"]), classifier=classifier)
    result = annotate(result, handle, since)
    if result.details.get("holm_warning"):
        log.warning("encoder_mi %s on model %s: %s", pseudonym, model_name, result.details["holm_warning"])
    out = _store(run_key, result, pair, db_url)
    log.info("encoder_mi %s on model %s: %d claimed images vs %d reference non-members, rule %s -> "
             "%s (p=%s); %s; finding %d %s", pseudonym, model_name, len(images), len(refs),
             p["membership_rule"], result.decision, result.p_value, query_stats(handle),
             out["finding_id"], "stored" if out["created"] else "already stored (re-run)")
    return out


def _capabilities(model_id: int, db_url: str | None) -> list[str]:
    with session_scope(db_url) as session:
        return list(session.get(AuditedModel, int(model_id)).capabilities or [])


def check_identity_inputs(photos: Sequence[bytes], capabilities: Sequence[str], *, alpha: float,
                          tau: int = 1, sex: str | None = None) -> None:
    """Refuse identity inference inputs that ``run_idia`` would refuse, before the model is
    opened (so a refusal leaves no evidence): too few photos for a model with text."""
    from audit_lib.methods import MethodInputError
    from audit_lib.methods.identity_inference import MIN_IMAGES, TEMPLATES

    if not 0 < alpha < 1:
        raise MethodInputError(f"alpha = {alpha} is not in (0, 1)")
    if "text" not in capabilities:
        return  # the finding is not_applicable; nothing else to check
    if len(photos) < MIN_IMAGES:
        raise MethodInputError(f"identity inference: {len(photos)} reference photo(s) of the subject; at "
                               f"least {MIN_IMAGES} are needed (register the subject with more photos)")
    if not 1 <= tau <= len(TEMPLATES):
        raise MethodInputError(f"identity inference: tau = {tau} is not in 1..{len(TEMPLATES)}")
    if sex is not None and sex not in ("f", "m"):
        raise MethodInputError(f"identity inference: sex {sex!r} is not 'f' or 'm'")


def check_membership_inputs(claimed: Sequence[bytes], references: Sequence[bytes], *, rule: str,
                            n_views: int, alpha: float) -> Any:
    """The method's own input checks (``membership_inference.check_inputs``), run before
    the model is opened; returns the classifier to pass on."""
    from audit_lib.methods.membership_inference import check_inputs

    return check_inputs(claimed, references, rule=rule, n_views=n_views, alpha=alpha)


def annotate(result: Any, handle: Any, since: tuple[int, int]) -> Any:
    """The finding with what happened: ``queries_sent`` and ``cache_hits`` since ``since``
    and, for EncoderMI, ``holm_references_needed`` and ``holm_warning`` (None when a
    per-image decision is reachable)."""
    details = with_query_counts(result.details, handle, since)
    if result.method == "encoder_mi":
        n, m, alpha = int(details["n_claimed"]), int(details["n_reference"]), float(result.alpha)
        details["holm_references_needed"] = holm_references_needed(n, alpha)
        details["holm_warning"] = holm_warning(n, m, alpha)
    result.details = details
    return result


def _checked_handle(pair: dict[str, int], run_key: str, db_url: str | None) -> Any:
    """The model's handle, refusing to go on when its version changed since the
    run's version check (the finding would be attached to the wrong version)."""
    handle = open_model_handle(pair["model_id"], run_key, db_url=db_url)
    handle.skip_recorded_repeats = True
    if int(handle.model_version_id) != int(pair["model_version_id"]):
        raise RuntimeError(f"model {pair['model_id']} changed during the run: version id "
                           f"{handle.model_version_id}, checked {pair['model_version_id']}; "
                           "re-run the audit")
    return handle
