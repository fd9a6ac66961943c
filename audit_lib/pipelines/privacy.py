"""Task bodies of the privacy audit: calibration once per model version, then each registered
privacy method (:mod:`audit_lib.method_registry`: identity and membership inference) per
subject x model pair. ``encoder-audit audit privacy`` uses the
same input checks (:func:`check_identity_inputs`, :func:`check_membership_inputs`, both run
before the model is opened) and the same finding annotations (:func:`annotate`).

Each pair task computes one method's finding through the model's evidence-recording
handle and stores it with ``store_finding`` (idempotent per run, method, target and model
version), so a retried task recomputes from the query cache and writes nothing new. The
handles skip cached repeats already recorded in the run's chain (``skip_recorded_repeats``:
EncoderMI's reference views, asked for by every pair, are recorded once per run and process).
The pairs of one chunk share what does not change between them (:class:`ChunkModels`): a
checkpoint's handle, opened and version-checked once, the model's reference non-members
and capabilities; the reference non-members' views come from the process's view memo.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from audit_lib.encoders.base import RecordingHandle
from audit_lib.encoders.cache import query_counts, with_query_counts
from audit_lib.findings import FindingResult
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
    views = [v for img in refs for v in make_views(img, int(p["n_views"]), memo=True)]
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
    """Run the privacy method ``method`` (a registered name or alias, e.g. ``idia`` or
    ``identity``) for each pair of one mapped task's chunk. The pair is logged before it
    runs, so a failure's log names it; a retry finds the findings already stored and
    recomputes nothing new (the query cache answers)."""
    from audit_lib.method_registry import get

    spec = get(method, "privacy")
    shared = ChunkModels(run_key, db_url)
    out = []
    for k, pair in enumerate(chunk, start=1):
        log.info("%s %d/%d: subject %s on model %s", spec.name, k, len(chunk), pair["subject_id"],
                 pair["model_id"])
        out.append(subject_pair(spec.name, pair, run_key, params, db_url=db_url, shared=shared))
    return out


class ChunkModels:
    """What the pairs of one chunk share per model, read once: the reference non-members,
    the capabilities and, for a checkpoint, the handle (opened and checked against the
    run's version once: its version is the hash of the weights in memory, which cannot
    change under it). An API's handle is opened per pair, so each pair's canaries check
    the version that answers it."""

    def __init__(self, run_key: str, db_url: str | None) -> None:
        self.run_key, self.db_url = run_key, db_url
        self._refs: dict[int, list[bytes]] = {}
        self._caps: dict[int, list[str]] = {}
        self._handles: dict[int, RecordingHandle] = {}

    def references(self, model_id: int) -> list[bytes]:
        if model_id not in self._refs:
            self._refs[model_id] = load_reference_nonmembers(model_id, db_url=self.db_url)
        return self._refs[model_id]

    def capabilities(self, model_id: int) -> list[str]:
        if model_id not in self._caps:
            self._caps[model_id] = _capabilities(model_id, self.db_url)
        return self._caps[model_id]

    def handle(self, pair: dict[str, int]) -> RecordingHandle:
        model_id = int(pair["model_id"])
        handle = self._handles.get(model_id)
        if handle is None or int(handle.model_version_id) != int(pair["model_version_id"]):
            handle = _checked_handle(pair, self.run_key, self.db_url)
            if not handle.versioned_by_canaries:
                self._handles[model_id] = handle
        return handle


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


def subject_pair(method: str, pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
                 *, db_url: str | None = None, shared: ChunkModels | None = None) -> dict[str, Any]:
    """One registered privacy method for one subject on one model; stores the finding.

    The method's spec says which of the subject's images it tests and whether it needs the
    model's reference non-members; its ``check`` hook runs before the model is opened (a
    refusal leaves no evidence), its ``task`` hook computes the finding through the model's
    evidence-recording handle. ``shared``: what the chunk's pairs of a model share
    (:class:`ChunkModels`; default: read and opened for this pair alone)."""
    from audit_lib.method_registry import SubjectInputs, get, hook
    from audit_lib.registry import subject_image_bytes

    spec = get(method, "privacy")
    task = hook(spec, "task")
    if task is None or spec.subject_images is None:
        raise ValueError(f"privacy method {spec.name} has no pipeline task")
    p = {**DEFAULT_PARAMS, **(params or {})}
    with session_scope(db_url) as session:
        subject = _subject(session, pair["subject_id"])
        images = [data for _, data in subject_image_bytes(session, subject, spec.subject_images)]
        name, aliases, sex, pseudonym = subject.name, list(subject.aliases or []), subject.sex, subject.pseudonym
        model_name = session.get(AuditedModel, int(pair["model_id"])).name
    shared = shared or ChunkModels(run_key, db_url)
    refs = shared.references(int(pair["model_id"])) if spec.needs_reference_nonmembers else []
    inputs = SubjectInputs(images=images, name=name, aliases=aliases, sex=sex, pseudonym=pseudonym,
                           capabilities=shared.capabilities(int(pair["model_id"])), reference_nonmembers=refs,
                           params=p)
    check = hook(spec, "check")
    prepared = check(inputs) if check else None
    handle = shared.handle(pair)
    since = query_counts(handle)
    result = annotate(task(handle, inputs, prepared), handle, since)
    if result.details.get("holm_warning"):
        log.warning("%s %s on model %s: %s", spec.name, pseudonym, model_name, result.details["holm_warning"])
    out = _store(run_key, result, pair, db_url)
    log.info("%s %s on model %s: %d %s images%s -> %s (p=%s, statistic=%s); %s; finding %d %s", spec.name,
             pseudonym, model_name, len(images), spec.subject_images,
             f" vs {len(refs)} reference non-members" if spec.needs_reference_nonmembers else "",
             result.decision, result.p_value, result.statistic, query_stats(handle), out["finding_id"],
             "stored" if out["created"] else "already stored (re-run)")
    return out


def identity_pair(pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
                  *, db_url: str | None = None) -> dict[str, Any]:
    """Identity inference (IDIA) for one subject on one model; stores the finding."""
    return subject_pair("idia", pair, run_key, params, db_url=db_url)


def membership_pair(pair: dict[str, int], run_key: str, params: dict[str, Any] | None = None,
                    *, db_url: str | None = None) -> dict[str, Any]:
    """Membership inference (EncoderMI) of a subject's claimed images on one model."""
    return subject_pair("encoder_mi", pair, run_key, params, db_url=db_url)


def _capabilities(model_id: int, db_url: str | None) -> list[str]:
    with session_scope(db_url) as session:
        return list(session.get(AuditedModel, int(model_id)).capabilities or [])


def check_identity_inputs(photos: Sequence[bytes], capabilities: Sequence[str], *, alpha: float,
                          tau: int = 1, sex: str | None = None) -> None:
    """Refuse identity inference inputs that ``run_idia`` would refuse, before the model is
    opened (so a refusal leaves no evidence): the method's own pre-query check."""
    from audit_lib.method_registry import SubjectInputs
    from audit_lib.methods.identity_inference import check_subject

    check_subject(SubjectInputs(images=list(photos), name="", aliases=[], sex=sex, pseudonym="",
                                capabilities=list(capabilities), reference_nonmembers=[],
                                params={"alpha": alpha, "tau": tau}))


def check_membership_inputs(claimed: Sequence[bytes], references: Sequence[bytes], *, rule: str,
                            n_views: int, alpha: float) -> Any:
    """The method's own input checks (``membership_inference.check_inputs``), run before
    the model is opened; returns the classifier to pass on."""
    from audit_lib.methods.membership_inference import check_inputs

    return check_inputs(claimed, references, rule=rule, n_views=n_views, alpha=alpha)


def annotate(result: FindingResult, handle: RecordingHandle, since: tuple[int, int]) -> FindingResult:
    """The finding with what happened: ``queries_sent`` and ``cache_hits`` since ``since``
    and, for a method with per-image Holm decisions (its spec's ``holm_per_image``),
    ``holm_references_needed`` and ``holm_warning`` (None when a per-image decision is
    reachable)."""
    from audit_lib.method_registry import find

    details = with_query_counts(result.details, handle, since)
    spec = find(result.method)
    if spec is not None and spec.holm_per_image:
        n, m, alpha = int(details["n_claimed"]), int(details["n_reference"]), float(result.alpha)
        details["holm_references_needed"] = holm_references_needed(n, alpha)
        details["holm_warning"] = holm_warning(n, m, alpha)
    result.details = details
    return result


def _checked_handle(pair: dict[str, int], run_key: str, db_url: str | None) -> RecordingHandle:
    """The model's handle, refusing to go on when its version changed since the
    run's version check (the finding would be attached to the wrong version)."""
    handle = open_model_handle(pair["model_id"], run_key, db_url=db_url)
    handle.skip_recorded_repeats = True
    if int(handle.model_version_id) != int(pair["model_version_id"]):
        raise RuntimeError(f"model {pair['model_id']} changed during the run: version id "
                           f"{handle.model_version_id}, checked {pair['model_version_id']}; "
                           "re-run the audit")
    return handle
