"""Commands of the fingerprint area (MetaV): ``enrol-fingerprint``, ``verify-fingerprint``.

They parse arguments and call the workflow in :mod:`audit_lib.ownership.fingerprint`
(:func:`~audit_lib.ownership.fingerprint.enrol_model`,
:func:`~audit_lib.ownership.fingerprint.verify_suspect`); ``enrol --fingerprint`` /
``verify --fingerprint`` delegate here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def enrol_fingerprint(
    model: Annotated[str, typer.Option(help="the owned checkpoint to enrol (name or id)")],
    independent: Annotated[Optional[list[str]], typer.Option(help="a registered independent checkpoint (repeatable); default: the registered null when the model has registered image sets, else the reference zoo's")] = None,
    zoo_profile: Annotated[str, typer.Option(help="reference zoo profile for the independent encoders")] = "ci",
    n_fingerprints: Annotated[int, typer.Option(help="fingerprint inputs N (= queries per verification, <= 100)")] = 32,
    steps: Annotated[int, typer.Option(help="joint optimisation steps")] = 200,
    alpha: Annotated[float, typer.Option(help="significance level committed with the fingerprint")] = 0.01,
    suspect_zoo: Annotated[str, typer.Option(help="suspect zoo size: ci (small, for tests) or full")] = "full",
    cache_dir: Annotated[Optional[Path], typer.Option(help="where built suspect zoos and trainings are cached (default: AUDIT_DATA_DIR/fingerprint)")] = None,
    figures: Annotated[Optional[Path], typer.Option(help="also write fingerprint-scores.png and fingerprint-aruc.png here")] = None,
) -> None:
    """Enrol an owned encoder for fingerprinting (MetaV): suspect zoo, fingerprints, verifier, calibration."""
    from audit_lib.cli_errors import fail
    from audit_lib.cli_errors import guarded as _guarded
    from audit_lib.methods.fingerprint import FingerprintConfig
    from audit_lib.ownership.fingerprint import enrol_model, write_figures
    from audit_lib.zoo.suspects import get_profile

    try:
        cfg = FingerprintConfig(n_fingerprints=n_fingerprints, steps=steps)
        zoo_cfg = get_profile(suspect_zoo)
    except ValueError as exc:
        fail(str(exc))

    def run() -> None:
        enrolment, art_id = enrol_model(model, independent_refs=independent or [], zoo_profile=zoo_profile,
                                        zoo_config=zoo_cfg, fp_config=cfg, alpha=alpha, cache_dir=cache_dir)
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

    from audit_lib.cli_errors import fail
    from audit_lib.cli_errors import guarded as _guarded
    from audit_lib.ownership import ArtefactError
    from audit_lib.ownership.fingerprint import verify_suspect

    key = run_key or f"cli-fingerprint-{uuid.uuid4().hex[:12]}"

    def run() -> None:
        from audit_lib.evidence import closing_run

        try:
            with closing_run(key):  # the run ends succeeded, or failed when this raises
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


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    """Add ``enrol-fingerprint`` and ``verify-fingerprint`` to the CLI."""
    app.command("enrol-fingerprint")(enrol_fingerprint)
    app.command("verify-fingerprint")(verify_fingerprint)
