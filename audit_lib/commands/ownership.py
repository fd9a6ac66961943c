"""``encoder-audit steal | enrol | verify``: theft-risk curves and watermarks.

- ``steal --target M --budgets 1%,5%,10% [--defence noise:0.1] ...``: StolenEncoder against a
  registered checkpoint (over the reference server's real HTTP API, with and without each
  output defence) or a registered API (through its evidence-recording handle);
- ``enrol --model M --watermark``: AWEncoder enrolment (marked checkpoint + committed artefact);
- ``verify --owned M --suspect S --watermark [--black-box]``: the calibrated watermark check.

``--fingerprint`` on ``enrol`` / ``verify`` is MetaV, whose own commands are
``enrol-fingerprint`` / ``verify-fingerprint`` (:mod:`audit_lib.commands.fingerprint`); the
flag runs those with their defaults, so both checks can share one command line. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from audit_lib.cli_errors import fail as _fail


def _fingerprint_hook(name: str):  # noqa: ANN202 - a callable from another area
    try:
        mod = importlib.import_module("audit_lib.commands.fingerprint")
    except ImportError:
        mod = None
    fn = getattr(mod, name, None) if mod is not None else None
    if fn is None:
        _fail(f"--fingerprint: fingerprinting is not available here (audit_lib.commands.fingerprint.{name})")
    return fn


def _errors():  # noqa: ANN202 - the exception types that mean "bad input"
    from audit_lib.ownership.artefacts import ArtefactError
    from audit_lib.registry import RegistryError

    return (ValueError, FileNotFoundError, ArtefactError, RegistryError)


def steal(
    target: Annotated[str, typer.Option(help="the registered model (name or id) to steal: a local checkpoint or an API")],
    budgets: Annotated[str, typer.Option(
        help="query budgets: counts (500,1000) or % of the target's training set (needs --train-size unless a zoo entry)")] = "1%,5%,10%",
    defence: Annotated[Optional[list[str]], typer.Option(
        help="checkpoint only: an output defence the reference server applies for its own API key: "
             "noise:SIGMA | topk:K | round:D (repeatable); an API's own defences are measured as deployed")] = None,
    train_size: Annotated[Optional[int], typer.Option(
        help="the target's training-set size, for budgets given as shares (an API does not say it)")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        help="the target's input size in pixels (default: the checkpoint's preprocessing or the API adapter's)")] = None,
    independent: Annotated[Optional[list[str]], typer.Option(
        help="a registered reference model for the null (repeatable; default: all reference models, or the zoo's)")] = None,
    data: Annotated[str, typer.Option(
        help="auto (registered image sets if any, else the zoo's for a zoo entry), registered, or zoo")] = "auto",
    epochs: Annotated[int, typer.Option(help="training epochs of each stolen copy (paper: 100)")] = 100,
    lr: Annotated[float, typer.Option(help="SGD learning rate (paper: 1e-3)")] = 1e-3,
    architecture: Annotated[str, typer.Option(
        "--stolen-architecture", "--architecture",
        help="the stolen encoder: small_cnn:NAME, torchvision:NAME[@SIZE] (size defaults to the target's), "
             "or open_clip:NAME (its vision tower)")] = "small_cnn:small-cnn-32",
    reference_budget: Annotated[str, typer.Option(help="budget at which the finding is decided")] = "5%",
    profile: Annotated[str, typer.Option(help="zoo path: the zoo profile supplying data and independent encoders")] = "ci",
    zoo_entry: Annotated[str, typer.Option(help="zoo path: the entry whose training-set size and data split apply")] = "simclr-target",
    zoo_cache: Annotated[Optional[Path], typer.Option(help="zoo cache root (default: <data dir>/zoo)")] = None,
    downstream_per_class: Annotated[Optional[int], typer.Option(
        help="subsample the labelled downstream split to this many images per class (quick runs)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder for theft-curve.png/json")] = None,
    alpha: Annotated[float, typer.Option(help="significance level of the finding")] = 0.05,
    run_key: Annotated[Optional[str], typer.Option(help="audit run key (default: generated)")] = None,
) -> None:
    """Simulate StolenEncoder theft of a registered encoder (checkpoint or API) at each query budget."""
    from audit_lib.cli_errors import check_output
    from audit_lib.encoders.remote import RemoteEncoderError
    from audit_lib.methods.theft import StealRecipe
    from audit_lib.ownership.theft import run_theft_risk

    check_output(out, folder=True, option="--out")
    try:
        recipe = StealRecipe(architecture=architecture, epochs=epochs, lr=lr)
        res = run_theft_risk(target, budgets=budgets, defences=tuple(defence or ()), recipe=recipe,
                             reference_budget=reference_budget, train_size=train_size, image_size=image_size,
                             independents=tuple(independent or ()), data=data, profile=profile,
                             zoo_entry=zoo_entry, zoo_cache=zoo_cache, downstream_per_class=downstream_per_class,
                             out_dir=out, run_key=run_key, alpha=alpha)
    except _errors() as exc:
        _fail(str(exc))
    except RemoteEncoderError as exc:  # the API failed mid-run (budget, auth, outage): the run is closed as failed
        _fail(str(exc), code=1)
    typer.echo(f"{'defence':<14}{'budget':>7}{'stolen acc':>12}{'target acc':>12}{'agreement':>11}"
               f"{'cosine':>9}{'utility cost':>14}")
    for p in res.result.details["curve"]:
        typer.echo(f"{p['defence']:<14}{p['budget']:>7}{p['stolen_accuracy']:>12.3f}{p['target_accuracy']:>12.3f}"
                   f"{p['agreement']:>11.3f}{p['cosine']:>9.3f}{p['utility_cost']:>14.3f}")
    r = res.result
    null = r.details["null_source"]
    typer.echo(f"finding {res.finding_id}: {r.decision} (agreement {r.statistic:.3f}, p = {r.p_value:.3g} against "
               f"{null['n']} independent encoders: {null['source']}; {r.details['p_method']} p-value)")
    typer.echo("image sets: " + ", ".join(f"{k} {v[:16]}" for k, v in sorted(r.details["image_sets"].items())))
    typer.echo(f"curve: {res.png}  numbers: {res.json}")


def enrol(
    model: Annotated[str, typer.Option(help="the owned model (name or id) to enrol")],
    watermark: Annotated[bool, typer.Option("--watermark", help="embed and commit an AWEncoder watermark")] = False,
    fingerprint: Annotated[bool, typer.Option("--fingerprint", help="train and commit a MetaV fingerprint")] = False,
    alpha: Annotated[float, typer.Option(help="significance level committed with the test")] = 0.01,
    steps: Annotated[Optional[int], typer.Option(help="watermark fine-tuning steps (default: the recipe's)")] = None,
    controls: Annotated[int, typer.Option(help="control perturbations of equal norm in the null")] = 99,
    published: Annotated[bool, typer.Option("--published", help=(
        "the paper's perturbation, optimised on the owned encoder alone (default: also on a shadow copy stolen "
        "from the owner's images, sparing independent encoders, so that stolen copies carry it)"))] = False,
    profile: Annotated[str, typer.Option(help="the zoo profile supplying data and independent encoders")] = "ci",
    zoo_cache: Annotated[Optional[Path], typer.Option(help="zoo cache root (default: <data dir>/zoo)")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="where trained enrolments are cached")] = None,
    downstream_per_class: Annotated[Optional[int], typer.Option(
        help="subsample the labelled downstream split to this many images per class (quick runs)")] = None,
) -> None:
    """Enrol an owned model: watermark it and/or fingerprint it, committing the artefacts."""
    if not (watermark or fingerprint):
        _fail("say what to enrol: --watermark and/or --fingerprint")
    if watermark:
        from audit_lib.methods.watermark import WatermarkRecipe
        from audit_lib.ownership.watermark import enrol_watermark_model

        try:
            recipe = WatermarkRecipe.chosen(published=published, n_controls=controls, embed_steps=steps)
            out = enrol_watermark_model(model, recipe=recipe,
                                        alpha=alpha, profile=profile, zoo_cache=zoo_cache, cache_dir=cache_dir,
                                        downstream_per_class=downstream_per_class)
        except _errors() as exc:
            _fail(str(exc))
        typer.echo(f"watermarked copy registered as model {out.marked_model_id} ({out.marked_model_name}) at "
                   f"{out.weights_path}{' (cached training)' if out.cached else ''}")
        typer.echo(f"downstream accuracy: unmarked {out.unmarked_accuracy:.3f}, marked {out.marked_accuracy:.3f}")
        typer.echo(f"artefact {out.artefact_id} committed: sha256 commitment {out.commitment_sha256}")
    if fingerprint:
        _fingerprint_hook("enrol_fingerprint")(model=model, alpha=alpha, zoo_profile=profile)


def verify(
    owned: Annotated[str, typer.Option(help="the owned (enrolled) model, name or id")],
    suspect: Annotated[str, typer.Option(help="the suspect model, name or id")],
    watermark: Annotated[bool, typer.Option("--watermark", help="check for the owned model's watermark")] = False,
    fingerprint: Annotated[bool, typer.Option("--fingerprint", help="check the owned model's fingerprint")] = False,
    black_box: Annotated[bool, typer.Option("--black-box", help="watermark through a downstream classifier only")] = False,
    alpha: Annotated[Optional[float], typer.Option(help="significance level (default: the committed one)")] = None,
    run_key: Annotated[Optional[str], typer.Option(help="audit run key (default: generated)")] = None,
    profile: Annotated[str, typer.Option(help="zoo profile of the labelled data (black-box mode)")] = "ci",
    zoo_cache: Annotated[Optional[Path], typer.Option(help="zoo cache root (default: <data dir>/zoo)")] = None,
    downstream_per_class: Annotated[Optional[int], typer.Option(
        help="black-box: labelled images per class for the suspect's downstream classifier")] = None,
) -> None:
    """Check whether a suspect model is a copy of an owned one."""
    if not (watermark or fingerprint):
        _fail("say what to check: --watermark and/or --fingerprint")
    import uuid

    from audit_lib.evidence import closing_run

    if watermark:
        from audit_lib.ownership.watermark import verify_watermark_suspect

        key = run_key or f"cli-watermark-{uuid.uuid4().hex[:12]}"
        try:
            with closing_run(key):  # the run ends succeeded, or failed when this raises
                out = verify_watermark_suspect(owned, suspect, black_box=black_box, alpha=alpha, run_key=key,
                                               profile=profile, zoo_cache=zoo_cache,
                                               downstream_per_class=downstream_per_class)
        except _errors() as exc:
            _fail(str(exc))
        r = out.result
        typer.echo(f"watermark ({r.details['mode']}): {r.decision}; statistic {r.statistic:.4f}, p = {r.p_value:.3g} "
                   f"against {len(r.details['null_scores'])} null statistics (alpha {r.alpha}); "
                   f"{r.details['n_queries']} queries; finding {out.finding_id}")
    if fingerprint:
        _fingerprint_hook("verify_fingerprint")(owned=owned, suspect=suspect, alpha=alpha, run_key=run_key)


def bench_theft(
    train_images: Annotated[int, typer.Option(help="the target's SimCLR pre-training images (CIFAR-10)")] = 5000,
    pretrain_epochs: Annotated[int, typer.Option(help="the target's SimCLR epochs")] = 30,
    steal_epochs: Annotated[int, typer.Option(help="epochs of each stolen copy (paper: 100)")] = 100,
    steal_lr: Annotated[float, typer.Option(help="SGD learning rate of the stolen copies")] = 0.05,
    independents: Annotated[int, typer.Option(help="independent reference encoders (the nulls)")] = 3,
    independent_epochs: Annotated[int, typer.Option(help="their SimCLR epochs")] = 10,
    budgets: Annotated[str, typer.Option(help="query budgets, shares of the training set or counts")] = "1%,5%,10%",
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default var/bench/theft.json)")] = None,
) -> None:
    """Realistic-scale StolenEncoder benchmark: theft curve with and without defences, through
    the reference server and an API with its own adapter, and the watermark in stolen copies."""
    import logging

    from audit_lib.bench.theft import TheftBenchConfig, format_table, run_theft_bench
    from audit_lib.cli_errors import check_output

    check_output(out, folder=False, option="--out")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        cfg = TheftBenchConfig(train_images=train_images, pretrain_epochs=pretrain_epochs, steal_epochs=steal_epochs,
                               steal_lr=steal_lr, n_independents=independents, independent_epochs=independent_epochs,
                               budgets=budgets, threads=threads)
        result = run_theft_bench(cfg, out, progress=typer.echo)
    except _errors() as exc:
        _fail(str(exc))
    for line in format_table(result):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add ``steal``, ``enrol``, ``verify`` and ``bench theft`` to the ``encoder-audit`` app."""
    from audit_lib.commands.encoders import _group

    app.command("steal")(steal)
    app.command("enrol")(enrol)
    app.command("verify")(verify)
    _group(app, "bench", "Benchmarks.").command("theft")(bench_theft)
