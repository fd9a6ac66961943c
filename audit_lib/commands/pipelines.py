"""``encoder-audit run …``: the Airflow pipelines, run in-process with ``dag.test()``
(the embedded default; a deployment runs the same DAGs from its scheduler)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from audit_lib.cli_errors import fail

DAGS = {"privacy-audit": "privacy_audit", "ownership-audit": "ownership_audit",
        "evidence-reports": "evidence_reports", "model-enrolment": "model_enrolment"}


def bench_pipeline(
    subjects: Annotated[int, typer.Option(help="subjects S (zoo: at most 40)")] = 40,
    population: Annotated[str, typer.Option(help="zoo (the tiny CLIP's people) or synthetic (any S, real images)")] = "zoo",
    claimed: Annotated[int, typer.Option(help="claimed images per subject")] = 3,
    n_candidates: Annotated[int, typer.Option(help="IDIA names incl. decoys")] = 1000,
    n_views: Annotated[int, typer.Option(help="EncoderMI views per image")] = 10,
    pairs_per_task: Annotated[int, typer.Option(help="subject x model pairs per mapped task")] = 1,
    profile: Annotated[str, typer.Option(help="reference zoo profile")] = "ci",
    database_url: Annotated[Optional[str], typer.Option(help=(
        "a PostgreSQL server, as the URL of any database on it (e.g. "
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres): the evidence store is a throwaway "
        "database encoder_audit_bench_<pid> created there and dropped after the run (default: a fresh "
        "SQLite file)"))] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default var/bench/pipeline-*.json)")] = None,
    work_dir: Annotated[Optional[Path], typer.Option(help=(
        "the run's folder (Airflow home, SQLite store), emptied first "
        "(default var/bench/pipeline-<population>-<S>[-pg], with celery pipeline-celery-<population>-<S>-w<N>)"))] = None,
    executor: Annotated[str, typer.Option(help=(
        "dag-test (tasks in this process) or celery (a local deployment: api-server, scheduler, "
        "dag-processor, a worker on queue default and --workers on queue gpu; needs --database-url)"))] = "dag-test",
    workers: Annotated[Optional[int], typer.Option(help="celery: workers on queue gpu, = gpu pool slots (default 1)")] = None,
    broker_url: Annotated[Optional[str], typer.Option(help=(
        "celery: a Redis database of the run's own, emptied before and after it "
        "(default redis://127.0.0.1:6379/14)"))] = None,
) -> None:
    """Privacy audit of S subjects x 3 zoo models. With dag.test(): wall time, pairs per
    second, queries, cache hits, the share of wall time in model work vs Airflow / database
    overhead, peak memory and the evidence store's size per 1,000 pairs. With --executor
    celery: wall time, pairs per second, task instances per worker and the duplicate checks."""
    import logging

    from audit_lib.bench.pipeline import PipelineBenchConfig

    if population not in ("zoo", "synthetic"):
        fail(f"--population {population!r}: expected zoo or synthetic")
    if executor not in ("dag-test", "celery"):
        fail(f"--executor {executor!r}: expected dag-test or celery")
    if executor == "dag-test" and (workers is not None or broker_url is not None):
        fail("--workers and --broker-url are for --executor celery")
    from audit_lib.cli_errors import check_output

    check_output(out, folder=False, option="--out")
    check_output(work_dir, folder=True, option="--work-dir")
    logging.basicConfig(level=logging.WARNING)
    cfg = PipelineBenchConfig(subjects=subjects, population=population, claimed=claimed, n_candidates=n_candidates,
                              n_views=n_views, pairs_per_task=pairs_per_task, profile=profile,
                              database_url=database_url or "")
    if executor == "celery":
        from audit_lib.bench import celery

        try:
            result = celery.run_celery_bench(cfg, 1 if workers is None else workers, out, progress=typer.echo,
                                             work_dir=work_dir, broker_url=broker_url or celery.DEFAULT_BROKER)
        except ValueError as exc:
            fail(str(exc))
        for line in celery.format_result(result):
            typer.echo(line)
        if not celery.succeeded(result):
            raise typer.Exit(1)
        return
    from audit_lib.bench.pipeline import format_result, run_pipeline_bench

    try:
        result = run_pipeline_bench(cfg, out, progress=typer.echo, work_dir=work_dir)
    except ValueError as exc:
        fail(str(exc))
    for line in format_result(result):
        typer.echo(line)
    if result.state != "success":
        raise typer.Exit(1)


def _bench_group(app: typer.Typer) -> typer.Typer:
    """The ``bench`` sub-app, shared with the encoder area's ``bench encoders``."""
    for info in app.registered_groups:
        if info.name == "bench":
            return info.typer_instance
    sub = typer.Typer(no_args_is_help=True, help="Benchmarks.")
    app.add_typer(sub, name="bench")
    return sub


def register(app: typer.Typer) -> None:
    _bench_group(app).command("pipeline")(bench_pipeline)
    run_app = typer.Typer(no_args_is_help=True, help="Run a pipeline (Airflow DAG) in-process.")
    app.add_typer(run_app, name="run")

    @run_app.command("dag")
    def run_dag(
        name: Annotated[str, typer.Argument(help=f"one of: {', '.join(DAGS)}")],
        conf: Annotated[Optional[str], typer.Option(help='DAG params as JSON, e.g. \'{"model_ids": [1]}\'')] = None,
    ) -> None:
        """Run one DAG end to end with dag.test() against the configured evidence store
        (Airflow's metadata: SQLite under {AUDIT_DATA_DIR}/airflow unless AIRFLOW_HOME is set)."""
        if name not in DAGS:
            typer.secho(f"error: unknown pipeline {name!r} (known: {', '.join(DAGS)})", err=True, fg="red")
            raise typer.Exit(2)
        try:
            params = json.loads(conf) if conf else {}
        except json.JSONDecodeError as exc:
            fail(f"--conf is not valid JSON ({exc})")
        from audit_lib.airflow_env import init_embedded

        init_embedded()
        from audit_lib.airflow_env import load_dags

        dag = load_dags()[DAGS[name]]
        dr = dag.test(run_conf=params)
        typer.echo(f"{DAGS[name]} {dr.run_id}: {dr.state}")
        if str(dr.state) != "success":
            raise typer.Exit(1)

    @run_app.command("demo")
    def run_demo(
        n_candidates: Annotated[int, typer.Option(help="IDIA names incl. decoys")] = 1000,
        profile: Annotated[str, typer.Option(help=(
            "reference zoo profile: demo (default: what the demo needs), ci (the tests' zoo) or smoke "
            "(mechanics only)"))] = "demo",
        enrol: Annotated[bool, typer.Option(help="enrol the owned encoder (watermark, fingerprint) first")] = True,
        serve: Annotated[bool, typer.Option(help=(
            "do not run the demo: open what each user sees on the last demo's data (Airflow UI, "
            "DPO web app, PDF folder) until Ctrl-C"))] = False,
        airflow_port: Annotated[int, typer.Option(help="--serve: the Airflow UI's port on 127.0.0.1")] = 8080,
        web_port: Annotated[int, typer.Option(help="--serve: the DPO web app's port on 127.0.0.1")] = 8000,
        demo_dir: Annotated[Optional[Path], typer.Option(help="the demo's folder (default var/demo)")] = None,
    ) -> None:
        """The embedded end-to-end demo: zoo, registration, enrolment, privacy and ownership
        audits, PDF reports (fresh store under var/demo; zoo and enrolment caches kept).
        With --serve, the three users' views of its data instead."""
        if serve:
            from audit_lib.pipelines.demo_serve import DemoDataMissing, check_demo
            from audit_lib.pipelines.demo_serve import serve as serve_views

            for port, opt in ((airflow_port, "--airflow-port"), (web_port, "--web-port")):
                if not 1 <= port <= 65535:
                    fail(f"{opt} {port}: expected a TCP port (1-65535)")
            if airflow_port == web_port:
                fail(f"--airflow-port and --web-port are both {web_port}: give them different ports")
            from audit_lib.pipelines.demo_serve import port_free

            for port, opt in ((airflow_port, "--airflow-port"), (web_port, "--web-port")):
                if not port_free(port):
                    fail(f"{opt} {port}: the port is in use on 127.0.0.1 (another server?): choose another")
            from audit_lib.config import PROJECT_ROOT

            folder = (demo_dir or PROJECT_ROOT / "var" / "demo").resolve()
            try:
                check_demo(folder)
            except DemoDataMissing as exc:
                fail(str(exc))
            raise typer.Exit(serve_views(folder, airflow_port=airflow_port, web_port=web_port))
        from audit_lib.pipelines.demo import main

        main(n_candidates=n_candidates, profile=profile, enrol=enrol, demo_dir=demo_dir)
