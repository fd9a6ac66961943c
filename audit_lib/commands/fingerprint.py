"""Commands of the fingerprint area (MetaV, issue 7): ``enrol-fingerprint``, ``verify-fingerprint``.

They are separate commands rather than ``--fingerprint`` flags on ``enrol`` / ``verify``
because the watermark area owns those two commands; both paths call the same functions
(:func:`enrol_owned_model`, :func:`verify_suspect`), so a shared ``enrol --fingerprint``
can delegate here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from sqlalchemy.orm import Session

    from audit_lib.findings import FindingResult
    from audit_lib.methods.fingerprint import FingerprintConfig, FingerprintEnrolment
    from audit_lib.methods.suspect_zoo import IndependentModel, SuspectZooConfig

log = logging.getLogger(__name__)


def enrolment_images(image_size: int, count: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Real images at ``image_size``: (infringer + thief data for the suspect zoo,
    fingerprint initialisation images). The zoo's image set (CIFAR-10 subset, or digits);
    test-array images, so none is the owned model's training data."""
    import numpy as np

    from audit_lib.encoders.local import preprocess_uint8
    from audit_lib.zoo.data import load_images

    images = load_images()
    x = images.x_test
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = np.stack([preprocess_uint8(_png(img), image_size) for img in x[:count + 200]])
    return np.ascontiguousarray(x[:count]), np.ascontiguousarray(x[count:count + 200])


def _png(img: Any) -> bytes:
    from audit_lib.methods.fingerprint import png_bytes

    return png_bytes(img[None])[0]


def enrol_owned_model(session: Session, model_ref: str, *, independents: list[IndependentModel],
                      zoo_config: SuspectZooConfig | None = None, fp_config: FingerprintConfig | None = None,
                      alpha: float = 0.01, cache_dir: Path | None = None) -> tuple[FingerprintEnrolment, int]:
    """Build the suspect zoo, train fingerprint + verifier, calibrate, and commit the
    enrolment artefact (kind ``fingerprint``) for a registered owned checkpoint.
    Returns (enrolment, artefact id)."""
    from audit_lib import registry
    from audit_lib.config import get_settings
    from audit_lib.encoders.architectures import build
    from audit_lib.methods.fingerprint import ARTEFACT_KIND, FingerprintConfig, train_or_load
    from audit_lib.methods.suspect_zoo import SuspectZooConfig, build_suspect_zoo
    from audit_lib.ownership import commit_artefact

    model = registry.get_model(session, model_ref)
    if model.role != "owned":
        raise registry.RegistryError(f"model {model.name}: only an owned model can be enrolled (role is {model.role})")
    if model.kind != "checkpoint":
        raise registry.RegistryError(f"model {model.name}: enrolment needs the weights (a checkpoint), not an API")
    if not independents:
        raise registry.RegistryError("independent encoders: the suspect zoo needs at least one (the negatives)")
    if not 0 < alpha < 1:
        raise registry.RegistryError(f"alpha {alpha}: expected 0 < alpha < 1")
    cache = cache_dir or get_settings().data_dir / "fingerprint"
    size = build(model.architecture).preprocess.image_size
    zoo_images, init_images = enrolment_images(size)
    zoo = build_suspect_zoo(model.architecture, Path(model.weights_path), independents, zoo_images,
                            cache / "suspect-zoo", zoo_config or SuspectZooConfig())
    enrolment = train_or_load(zoo, init_images, fp_config or FingerprintConfig(), cache / "trained", alpha=alpha)
    tensors, spec = enrolment.to_artefact()
    art = commit_artefact(session, model_id=model.id, kind=ARTEFACT_KIND, tensors=tensors, spec=spec)
    enrolment.commitment_sha256 = art.commitment_sha256
    return enrolment, int(art.id)


def load_enrolment(session: Session, model_id: int) -> FingerprintEnrolment:
    """The owned model's latest fingerprint enrolment, hash- and commitment-checked."""
    from audit_lib.methods.fingerprint import ARTEFACT_KIND, FingerprintEnrolment
    from audit_lib.ownership import latest_artefact

    art = latest_artefact(session, model_id, ARTEFACT_KIND)
    return FingerprintEnrolment.from_artefact(art.tensors, art.spec, art.commitment_sha256)


def verify_suspect(owned_ref: str, suspect_ref: str, *, run_key: str, alpha: float | None = None,
                   db_url: str | None = None) -> tuple[FindingResult, int]:
    """Query the suspect on the owned model's committed fingerprints (N queries through the
    store's cache, recorded as evidence in run ``run_key``), decide, and store the finding.
    Returns (finding, finding id)."""
    from audit_lib import registry
    from audit_lib.encoders import open_handle
    from audit_lib.evidence import start_run, store_finding
    from audit_lib.methods.fingerprint import verify
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        owned = registry.get_model(s, owned_ref)
        suspect = registry.get_model(s, suspect_ref)
        if owned.role != "owned":
            raise registry.RegistryError(f"model {owned.name}: --owned must name an owned model")
        enrolment = load_enrolment(s, owned.id)
        start_run(s, run_key, "ownership", {"method": "fingerprint", "owned": owned.name,
                                            "suspect": suspect.name,
                                            "commitment_sha256": enrolment.commitment_sha256})
    handle = open_handle(suspect, run_key=run_key, db_url=db_url)
    result = verify(handle, enrolment, alpha=alpha)
    with session_scope(db_url) as s:
        run = start_run(s, run_key, "ownership")
        owned = registry.get_model(s, owned_ref)
        row, _ = store_finding(s, run, result, target_key=f"fingerprint:{owned.name}->{suspect.name}",
                               model_version_id=handle.model_version_id)
        return result, int(row.id)


def _independents_from(session_models: list[str], zoo_profile: str | None) -> list[IndependentModel]:
    """Negatives: registered checkpoints named with ``--independent``, else the reference
    zoo's independent encoders (built or loaded from its cache)."""
    from audit_lib import registry
    from audit_lib.methods.suspect_zoo import IndependentModel
    from audit_lib.store import session_scope

    if session_models:
        out = []
        with session_scope() as s:
            for ref in session_models:
                m = registry.get_model(s, ref)
                if m.kind != "checkpoint":
                    raise registry.RegistryError(f"model {m.name}: an independent encoder must be a checkpoint")
                out.append(IndependentModel(m.name, m.architecture, Path(m.weights_path)))
        return out
    from audit_lib.zoo.build import build_zoo

    manifest = build_zoo(zoo_profile or "ci", register=False, progress=False)
    return [IndependentModel(e.name, e.architecture, Path(e.weights_path)) for e in manifest.by_role("independent")]


def enrol_fingerprint(
    model: Annotated[str, typer.Option(help="the owned checkpoint to enrol (name or id)")],
    independent: Annotated[Optional[list[str]], typer.Option(help="a registered independent checkpoint (repeatable); default: the reference zoo's")] = None,
    zoo_profile: Annotated[str, typer.Option(help="reference zoo profile for the independent encoders")] = "ci",
    n_fingerprints: Annotated[int, typer.Option(help="fingerprint inputs N (= queries per verification, <= 100)")] = 32,
    steps: Annotated[int, typer.Option(help="joint optimisation steps")] = 200,
    alpha: Annotated[float, typer.Option(help="significance level committed with the fingerprint")] = 0.01,
    suspect_zoo: Annotated[str, typer.Option(help="suspect zoo size: ci (small, for tests) or full")] = "full",
    cache_dir: Annotated[Optional[Path], typer.Option(help="where built suspect zoos and trainings are cached (default: AUDIT_DATA_DIR/fingerprint)")] = None,
    figures: Annotated[Optional[Path], typer.Option(help="also write fingerprint-scores.png and fingerprint-aruc.png here")] = None,
) -> None:
    """Enrol an owned encoder for fingerprinting (MetaV): suspect zoo, fingerprints, verifier, calibration."""
    from audit_lib.cli import _guarded, _session, fail
    from audit_lib.methods.fingerprint import FingerprintConfig
    from audit_lib.methods.suspect_zoo import get_profile

    try:
        cfg = FingerprintConfig(n_fingerprints=n_fingerprints, steps=steps)
        zoo_cfg = get_profile(suspect_zoo)
    except ValueError as exc:
        fail(str(exc))

    def run() -> None:
        inds = _independents_from(independent or [], zoo_profile)
        with _session() as s:
            enrolment, art_id = enrol_owned_model(s, model, independents=inds, zoo_config=zoo_cfg, fp_config=cfg,
                                                  alpha=alpha, cache_dir=cache_dir)
        cal = enrolment.calibration
        typer.echo(f"enrolled {model} for fingerprinting: artefact {art_id}, commitment "
                   f"{enrolment.commitment_sha256}")
        typer.echo(f"  N = {enrolment.n_fingerprints} fingerprints; held-out test ARUC "
                   f"{_fmt(cal.test_aruc)} (validation {_fmt(cal.val_aruc)}); held-out positives called "
                   f"pirated at alpha {cal.alpha}: {cal.test_positives_detected}/{len(cal.test_positive_scores)}; "
                   f"held-out negatives: {len(cal.negative_scores)}, false alarms {cal.false_alarms} "
                   f"(Clopper-Pearson 95% upper bound {cal.fpr_upper_95:.3f})")
        if figures:
            for path in write_figures(enrolment, figures):
                typer.echo(f"  figure {path}")

    from audit_lib.encoders.loading import CheckpointError

    _guarded(run, CheckpointError)  # e.g. an independent's weights that do not fit its architecture


def verify_fingerprint(
    owned: Annotated[str, typer.Option(help="the enrolled owned model (name or id)")],
    suspect: Annotated[str, typer.Option(help="the suspect model: checkpoint or API (name or id)")],
    run_key: Annotated[Optional[str], typer.Option(help="audit run key (default: a new one)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="override the committed alpha (reported)")] = None,
) -> None:
    """Is the suspect a copy of the owned model? N fingerprint queries, calibrated p-value, stored finding."""
    import uuid

    from audit_lib.cli import _guarded, fail
    from audit_lib.ownership import ArtefactError

    key = run_key or f"cli-fingerprint-{uuid.uuid4().hex[:12]}"

    def run() -> None:
        try:
            result, fid = verify_suspect(owned, suspect, run_key=key, alpha=alpha)
        except (ArtefactError, ValueError) as exc:
            fail(str(exc))
        d = result.details
        if result.decision == "not_applicable":
            typer.echo(f"finding {fid}: not applicable ({d['assumptions'][-1]})")
            return
        typer.echo(f"finding {fid} (run {key}): {result.decision} at alpha {result.alpha}; verifier score "
                   f"{d['score']:.4f} (logit {d['logit']:.2f}), p = {result.p_value:.3g} ({d['p_method']}; rank p "
                   f"{d['p_rank']:.3g} among {len(d['negative_scores'])} held-out negatives); "
                   f"{d['n_queries']} queries")

    _guarded(run)


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


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    """Add ``enrol-fingerprint`` and ``verify-fingerprint`` to the CLI."""
    app.command("enrol-fingerprint")(enrol_fingerprint)
    app.command("verify-fingerprint")(verify_fingerprint)
