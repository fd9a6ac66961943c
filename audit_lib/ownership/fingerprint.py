"""The fingerprint workflow (MetaV, :mod:`audit_lib.methods.fingerprint`): enrol an owned
checkpoint and verify a suspect, wired to the registry, the evidence store and the data.

Enrolment builds the owned model's suspect zoo (:mod:`audit_lib.zoo.suspects`: derivatives
of it and variants of independent encoders), trains the fingerprints and the meta-verifier
on it (cached by config hash), calibrates on the held-out negatives and commits the
``fingerprint`` artefact. Two sources of data and negatives:

- an owned model with registered image sets (``encoder-audit models data add``): the
  derivatives are made with the owner's ``owner`` images (the infringer's half) and
  ``public`` images (the thief's half); the negatives' families are the independence null
  of :mod:`audit_lib.ownership.null` (registered reference checkpoints, topped up with
  independents trained on the public images);
- otherwise the reference zoo's images and independent encoders (or checkpoints named
  with ``--independent``): the reference measurement of the README's tables.

Verification sends the N committed fingerprints as PNG files to the suspect, local or API.
CLI commands and DAG tasks call these functions and only parse arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.orm import Session

    from audit_lib.findings import FindingResult
    from audit_lib.methods.fingerprint import FingerprintConfig, FingerprintEnrolment
    from audit_lib.zoo.suspects import IndependentModel, SuspectZoo, SuspectZooConfig

log = logging.getLogger(__name__)

INIT_IMAGES = 200  # real images the fingerprints start from (disjoint from the suspect zoo's)


def enrolment_images(image_size: int, count: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Real images at ``image_size``: (infringer + thief data for the suspect zoo,
    fingerprint initialisation images). The zoo's image set (CIFAR-10 subset, or digits);
    test-array images, so none is the owned model's training data."""
    from audit_lib.encoders.local import preprocess_uint8
    from audit_lib.imaging import png_bytes
    from audit_lib.zoo.data import load_images

    images = load_images()
    x = images.x_test
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = np.stack([preprocess_uint8(png_bytes(img), image_size) for img in x[:count + INIT_IMAGES]])
    return np.ascontiguousarray(x[:count]), np.ascontiguousarray(x[count:count + INIT_IMAGES])


def owner_enrolment_images(data: Any, zoo_config: SuspectZooConfig) -> tuple[np.ndarray, np.ndarray]:
    """(suspect-zoo images, fingerprint initialisation images) from an owner's registered
    data: the zoo's first half (fine-tuning, distillation) is the owner's images, its second
    half (the thief's surrogate) and the initialisation images are public images."""
    owner, public = np.asarray(data.owner_clean), np.asarray(data.surrogate)
    n_init = min(INIT_IMAGES, max(0, len(public) // 4))
    half = min(len(owner), len(public) - n_init)
    try:
        zoo_config.check_fits(2 * max(half, 0))
        if n_init < 1:
            raise ValueError("no public images are left to initialise the fingerprints")
    except ValueError as exc:
        raise ValueError(f"registered images: {len(owner)} owner and {len(public)} public images are too few for "
                         f"this suspect zoo ({exc}); register more with `encoder-audit models data add`") from None
    zoo_images = np.ascontiguousarray(np.concatenate([owner[:half], public[:half]]))
    return zoo_images, np.ascontiguousarray(public[len(public) - n_init:])


def train_or_load(zoo: SuspectZoo, init_images: np.ndarray, config: FingerprintConfig, cache_dir: Path,
                  alpha: float = 0.01) -> FingerprintEnrolment:
    """Train the fingerprint on a built suspect zoo (or load the result cached under
    ``cache_dir``, keyed by the zoo's key, the config, the initial images, alpha and the
    method version; stored as safetensors + JSON, no pickle)."""
    from audit_lib.methods.fingerprint import METHOD_VERSION, FingerprintEnrolment, enrolment_from_training, \
        train_fingerprint
    from audit_lib.ownership import pack_payload, unpack_payload

    key = hashlib.sha256(json.dumps({
        "zoo": zoo.manifest["key"], "config": config.as_dict(), "alpha": alpha, "v": METHOD_VERSION,
        "init": hashlib.sha256(np.ascontiguousarray(init_images).tobytes()).hexdigest()},
        sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        tensors, spec = unpack_payload(path.read_bytes())
        log.info("fingerprint: cached training %s", key)
        return FingerprintEnrolment.from_artefact(tensors, spec)
    trained = train_fingerprint(zoo.owned_network(), zoo.entries(), init_images, config)
    manifest = {**zoo.manifest, "scores": trained.scores, "history": trained.history}
    enrolment = enrolment_from_training(trained, manifest, alpha)
    tensors, spec = enrolment.to_artefact()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(pack_payload(tensors, spec))
    tmp.replace(path)
    return enrolment


def build_zoo_for(session: Session, model_ref: str | int, *, independents: list[IndependentModel] | None = None,
                  data: Any = None, zoo_config: SuspectZooConfig | None = None, cache_dir: Path | None = None,
                  min_null: int | None = None, null_config: Any = None) -> tuple[SuspectZoo, np.ndarray, dict[str, Any]]:
    """The owned checkpoint's suspect zoo (built, or loaded from the cache) with the
    fingerprints' initialisation images and the null's provenance. Negatives: ``independents``
    when given (the reference zoo's, or named checkpoints) with the zoo's images; else the
    owner's registered data (``data``, or loaded) with the independence null of
    :mod:`audit_lib.ownership.null`, whose trained encoders become negative families."""
    from dataclasses import replace

    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.encoders.architectures import build
    from audit_lib.ownership.null import DEFAULT_MIN_MODELS, NAMED, IndependentNull, NullModel, TrainedNullConfig, \
        independent_null
    from audit_lib.ownership.watermark import check_trainable, has_registered_data, registered_data
    from audit_lib.zoo.suspects import SuspectZooConfig, build_suspect_zoo

    model = registry.get_model(session, model_ref)
    arch, weights = registry.require_owned_checkpoint(model)
    check_trainable(arch, Path(weights))  # before any image is read or anything trained
    cache = Path(cache_dir or get_settings().data_dir / "fingerprint")
    zoo_config = zoo_config or SuspectZooConfig()
    if independents is None and (data is not None or has_registered_data(session, model.id)):
        data = data if data is not None else registered_data(session, model)
        null = independent_null(session, model, data.surrogate,
                                minimum=min_null or DEFAULT_MIN_MODELS, local_only=True,
                                config=null_config or TrainedNullConfig())
        zoo_images, init_images = owner_enrolment_images(data, zoo_config)
        zoo_config = replace(zoo_config, extra_independents=0)  # the null supplies the negative families
        independents = null.independent_models()
        image_sets = dict(getattr(data, "image_sets", {}) or {})
    else:
        if not independents:
            raise registry.RegistryError("independent encoders: the suspect zoo needs at least one (the negatives)")
        null = IndependentNull([NullModel(m.name, NAMED, "checkpoint", m.architecture, str(m.weights_path))
                                for m in independents])
        zoo_images, init_images = enrolment_images(build(arch).preprocess.image_size)
        image_sets = {}
    zoo = build_suspect_zoo(arch, Path(weights), independents, zoo_images, cache / "suspect-zoo", zoo_config)
    return zoo, init_images, {**null.as_dict(), "image_sets": image_sets}


def enrol_owned_model(session: Session, model_ref: str | int, *, independents: list[IndependentModel] | None = None,
                      data: Any = None, zoo_config: SuspectZooConfig | None = None,
                      fp_config: FingerprintConfig | None = None, alpha: float = 0.01, cache_dir: Path | None = None,
                      min_null: int | None = None, null_config: Any = None) -> tuple[FingerprintEnrolment, int]:
    """Build the suspect zoo (:func:`build_zoo_for`), train fingerprint + verifier,
    calibrate, and commit the enrolment artefact (kind ``fingerprint``, with the null's
    provenance) for a registered owned checkpoint. Returns (enrolment, artefact id)."""
    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.methods.fingerprint import ARTEFACT_KIND, FingerprintConfig
    from audit_lib.ownership import commit_artefact

    if not 0 < alpha < 1:
        raise registry.RegistryError(f"alpha {alpha}: expected 0 < alpha < 1")
    cache = Path(cache_dir or get_settings().data_dir / "fingerprint")
    zoo, init_images, null = build_zoo_for(session, model_ref, independents=independents, data=data,
                                           zoo_config=zoo_config, cache_dir=cache, min_null=min_null,
                                           null_config=null_config)
    enrolment = train_or_load(zoo, init_images, fp_config or FingerprintConfig(), cache / "trained", alpha=alpha)
    held_out = {v["family"] for v in enrolment.zoo_manifest.get("scores", {}).values()
                if v["split"] == "test" and v["label"] == 0}
    enrolment.zoo_manifest["null"] = {**null, "held_out_families": sorted(held_out)}
    tensors, spec = enrolment.to_artefact()
    model = registry.get_model(session, model_ref)
    art = commit_artefact(session, model_id=model.id, kind=ARTEFACT_KIND, tensors=tensors, spec=spec)
    enrolment.commitment_sha256 = art.commitment_sha256
    return enrolment, int(art.id)


def load_enrolment(session: Session, model_id: int) -> FingerprintEnrolment:
    """The owned model's latest fingerprint enrolment, hash- and commitment-checked."""
    from audit_lib.methods.fingerprint import ARTEFACT_KIND, FingerprintEnrolment
    from audit_lib.ownership import latest_artefact

    art = latest_artefact(session, model_id, ARTEFACT_KIND)
    return FingerprintEnrolment.from_artefact(art.tensors, art.spec, art.commitment_sha256)


def suspect_input_size(model: Any) -> int | None:
    """The suspect's input size in pixels: a checkpoint's architecture's, an API's stated
    ``image_size`` (ValueError when it is not a size), None when an API states none."""
    if model.kind == "checkpoint" and model.architecture:
        from audit_lib.encoders.architectures import build

        return int(build(model.architecture).preprocess.image_size)
    size = (model.adapter or {}).get("image_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"model {model.name}: its stated input size {size!r} is not a size in pixels (>= 8); "
                         "fix the API's image_size with `encoder-audit models update`")
    return size


def at_input_size(enrolment: FingerprintEnrolment, size: int | None) -> FingerprintEnrolment:
    """The enrolment with its fingerprints resized (bicubic, as the handles preprocess) to a
    suspect API's input size; unchanged for a local suspect or an API of the same size."""
    from dataclasses import replace

    from audit_lib.encoders.local import preprocess_uint8

    if size is None or size == enrolment.images.shape[1]:
        return enrolment
    resized = np.stack([preprocess_uint8(png, size) for png in enrolment.pngs()])
    return replace(enrolment, images=np.ascontiguousarray(resized))


def check_fingerprint(handle: Any, owned_id: int, suspect: Any, *, alpha: float | None = None,
                      database_url: str | None = None) -> tuple[FindingResult, str]:
    """Verify the owned model's committed fingerprint on an open suspect handle (local, or
    an API whose stated input size the fingerprints are sent at; an unusable stated size is
    refused before any query). Returns (finding, commitment sha256)."""
    from audit_lib.methods.fingerprint import verify
    from audit_lib.ownership.watermark import with_null_provenance
    from audit_lib.store import session_scope

    with session_scope(database_url) as s:
        enrolment = load_enrolment(s, int(owned_id))
    size = suspect_input_size(suspect) if suspect.kind == "api" else None
    result = verify(handle, at_input_size(enrolment, size), alpha=alpha)
    null = enrolment.zoo_manifest.get("null")
    if result.decision != "not_applicable":
        result = with_null_provenance(result, null, len(enrolment.calibration.negative_logits))
        if size is not None:
            result.details["sent_at_input_size"] = size
    return result, str(enrolment.commitment_sha256)


def verify_suspect(owned_ref: str, suspect_ref: str, *, run_key: str, alpha: float | None = None,
                   db_url: str | None = None) -> tuple[FindingResult, int]:
    """Query the suspect (local or API) on the owned model's committed fingerprints (N
    queries through the store's cache, recorded as evidence in run ``run_key``), decide,
    and store the finding. Returns (finding, finding id)."""
    from audit_lib import registry
    from audit_lib.evidence import start_run, store_finding
    from audit_lib.pipelines.handles import open_model_handle
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        owned = registry.get_model(s, owned_ref)
        suspect = registry.get_model(s, suspect_ref)
        if owned.role != "owned":
            raise registry.RegistryError(f"model {owned.name}: --owned must name an owned model")
        enrolment = load_enrolment(s, owned.id)
        if suspect.kind == "api":
            suspect_input_size(suspect)  # refused here, before the run starts or anything is sent
        owned_id, owned_name, suspect_id, suspect_name = owned.id, owned.name, suspect.id, suspect.name
        s.expunge(suspect)
        start_run(s, run_key, "ownership", {"method": "fingerprint", "owned": owned_name,
                                            "suspect": suspect_name,
                                            "commitment_sha256": enrolment.commitment_sha256})
    handle = open_model_handle(suspect_id, run_key, db_url=db_url)
    result, _ = check_fingerprint(handle, owned_id, suspect, alpha=alpha, database_url=db_url)
    with session_scope(db_url) as s:
        run = start_run(s, run_key, "ownership")
        row, _ = store_finding(s, run, result, target_key=f"fingerprint:{owned_name}->{suspect_name}",
                               model_version_id=handle.model_version_id)
        return result, int(row.id)


def enrol_model(model_ref: str | int, *, independent_refs: list[str] = (), zoo_profile: str | None = "ci",
                zoo_config: SuspectZooConfig | None = None, fp_config: FingerprintConfig | None = None,
                alpha: float = 0.01, cache_dir: Path | None = None,
                db_url: str | None = None) -> tuple[FingerprintEnrolment, int]:
    """Enrol in one transaction, choosing the negatives: checkpoints named in
    ``independent_refs``; else, when the owner registered image sets, the registered null;
    else the reference zoo ``zoo_profile``'s independent encoders."""
    from audit_lib import registry
    from audit_lib.ownership.watermark import has_registered_data
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        model = registry.get_model(s, model_ref)
        registry.require_owned_checkpoint(model)  # refused before the zoo is built or loaded
        registered = has_registered_data(s, model.id)
    if not 0 < alpha < 1:
        raise registry.RegistryError(f"alpha {alpha}: expected 0 < alpha < 1")
    independents = named_independents(list(independent_refs), None if registered else zoo_profile, db_url=db_url)
    with session_scope(db_url) as s:
        return enrol_owned_model(s, model_ref, independents=independents, zoo_config=zoo_config, fp_config=fp_config,
                                 alpha=alpha, cache_dir=cache_dir)


def named_independents(refs: list[str], zoo_profile: str | None, *, db_url: str | None = None
                       ) -> list[IndependentModel] | None:
    """Negatives named on the command line: registered checkpoints (``--independent``);
    with none named, the reference zoo's independent encoders (built or loaded from its
    cache) when ``zoo_profile`` is given, else None (the registered null is used)."""
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.zoo.suspects import IndependentModel

    if refs:
        out = []
        with session_scope(db_url) as s:
            for ref in refs:
                m = registry.get_model(s, ref)
                if m.kind != "checkpoint":
                    raise registry.RegistryError(f"model {m.name}: an independent encoder must be a checkpoint")
                out.append(IndependentModel(m.name, m.architecture, Path(m.weights_path)))
        return out
    if not zoo_profile:
        return None
    from audit_lib.zoo.build import build_zoo

    manifest = build_zoo(zoo_profile, register=False, progress=False)
    return [IndependentModel(e.name, e.architecture, Path(e.weights_path)) for e in manifest.by_role("independent")]


def write_figures(enrolment: FingerprintEnrolment, out_dir: Path, prefix: str = "fingerprint") -> list[Path]:
    """Two PNGs for the docs and reports: the verifier's logits of every zoo model by split
    and kind (held-out test suspects marked), and robustness / uniqueness over tau on the
    held-out test suspects with the ARUC area shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scores = enrolment.zoo_manifest.get("scores", {})
    if not scores:
        raise ValueError("this enrolment carries no zoo scores to plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    splits = ["owned", "train", "val", "test"]
    for i, split in enumerate(splits):
        for label, colour in ((1, "tab:red"), (0, "tab:blue")):
            vals = [v["logit"] for v in scores.values() if v["split"] == split and v["label"] == label]
            x = i + (0.12 if label else -0.12) + np.linspace(-0.06, 0.06, max(len(vals), 1))[:len(vals)]
            ax.scatter(x, vals, s=18, c=colour, alpha=0.8,
                       label=("pirated (owned + derivatives)" if label else "independent") if i == 3 else None)
    ax.set_xticks(range(len(splits)), ["owned", "train", "validation", "held-out test"])
    ax.set_ylabel("verifier logit")
    ax.set_title(f"MetaV verifier on the suspect zoo (N = {enrolment.n_fingerprints} fingerprints)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{prefix}-scores.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    cal = enrolment.calibration
    if cal.test_positive_scores:
        taus = np.linspace(0, 1, 1001)
        pos, neg = np.asarray(cal.test_positive_scores), np.asarray(cal.negative_scores)
        rob = (pos[None, :] >= taus[:, None]).mean(1)
        uni = (neg[None, :] < taus[:, None]).mean(1)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.plot(taus, rob, label="robustness (held-out positives >= tau)", c="tab:red")
        ax.plot(taus, uni, label="uniqueness (held-out negatives < tau)", c="tab:blue")
        ax.fill_between(taus, np.minimum(rob, uni), alpha=0.2, color="grey", label=f"ARUC = {cal.test_aruc:.3f}")
        ax.set_xlabel("threshold tau on P(pirated)")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="lower center", fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}-aruc.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
