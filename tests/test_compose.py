"""The production deployment files: docker-compose.yml, Dockerfile, .dockerignore.

There is no Docker engine here; ``docker compose config`` runs where the client has the
compose plugin, and a structural check of the YAML always runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml
from sqlalchemy.engine import make_url

from audit_lib.config import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
SECRETS = ("AIRFLOW_DB_PASSWORD", "AUDIT_DB_PASSWORD", "POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY",
           "AIRFLOW_JWT_SECRET", "AUDIT_WEB_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _cmd(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_services_after_the_official_airflow_compose(compose):
    services = compose["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker-cpu",
            "airflow-worker-gpu", "web"} <= set(services)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert _cmd(services[name]).split()[0] == name.removeprefix("airflow-").replace("apiserver", "api-server")
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    for name, svc in services.items():
        if name.startswith("airflow-") or name == "web":
            assert svc["build"] == "." and svc["image"].startswith("${ENCODER_AUDIT_IMAGE")
            if name != "web":
                assert _env(svc)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
                assert _env(svc)["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379")


def test_workers_listen_on_their_queues_and_the_gpu_worker_reserves_gpus(compose):
    cpu, gpu = compose["services"]["airflow-worker-cpu"], compose["services"]["airflow-worker-gpu"]
    assert re.search(r"celery worker --queues default\b", _cmd(cpu))
    assert re.search(r"celery worker --queues gpu\b", _cmd(gpu))
    assert "deploy" not in cpu and _env(cpu)["CUDA_VISIBLE_DEVICES"] == ""
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "${GPU_COUNT:-1}", "capabilities": ["gpu"]}]
    assert _env(gpu)["AUDIT_GPU_QUEUE"] == "gpu"


def test_the_gpu_pool_and_both_schemas_are_created_at_init(compose):
    init = _cmd(compose["services"]["airflow-init"])
    assert "airflow db migrate" in init
    assert re.search(r'airflow pools set gpu "\$\$\{GPU_COUNT:-1\}"', init)
    assert "encoder-audit db upgrade" in init


def test_evidence_database_is_not_the_metadata_database(compose):
    env = _env(compose["services"]["airflow-scheduler"])
    meta = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("${", "").replace(":?", ""))
    evidence = make_url(env["AUDIT_DATABASE_URL"].replace("${", "").replace(":?", ""))
    assert meta.database == "airflow" and evidence.database == "evidence"
    assert meta.username != evidence.username
    init_sql = (PROJECT_ROOT / "scripts" / "airflow-postgres-init.sh").read_text()
    assert "CREATE DATABASE airflow OWNER airflow" in init_sql and "CREATE DATABASE evidence OWNER audit" in init_sql
    assert subprocess.run(["bash", "-n", str(PROJECT_ROOT / "scripts" / "airflow-postgres-init.sh")]).returncode == 0


def test_artefacts_and_reports_are_volumes(compose):
    assert {"audit-artefacts", "audit-reports", "postgres-db-volume"} <= set(compose["volumes"])
    worker = compose["services"]["airflow-worker-gpu"]
    mounts = {v.split(":")[1] for v in worker["volumes"]}
    assert {"/opt/encoder-audit/var", "/opt/encoder-audit/var/reports"} <= mounts
    web = compose["services"]["web"]
    assert "audit-reports:/opt/encoder-audit/var/reports:ro" in web["volumes"]
    assert _cmd(web) == "web serve --host 0.0.0.0 --port 8080"


def test_secrets_have_no_defaults():
    text = COMPOSE.read_text()
    for name in SECRETS:
        assert f"${{{name}:?" in text, f"{name} must be required (${{{name}:?...}})"
        assert not re.search(rf"\$\{{{name}:-", text), f"{name} must not have a default"


def test_dockerfile_matches_the_pinned_airflow_and_ignores_local_state():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    pinned = re.search(r'"apache-airflow==([\d.]+)"', (PROJECT_ROOT / "pyproject.toml").read_text()).group(1)
    assert re.search(rf"^FROM apache/airflow:{re.escape(pinned)}-python3\.11$", dockerfile, re.M)
    assert "-c constraints.txt" in dockerfile and "COPY --chown=airflow:root dags" in dockerfile
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", ".env", ".git"} <= ignored


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_validates(tmp_path):
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client has no compose plugin here")
    env = {**os.environ, **{name: "x" * 40 for name in SECRETS}}
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_web_app_is_served_only_behind_tls(compose):
    services = compose["services"]
    web, tls = services["web"], services["web-tls"]
    assert "ports" not in web, "the web app's plain-HTTP port must not be published"
    env = _env(web)
    assert env["AUDIT_WEB_COOKIE_SECURE"] in ("1", "true", True)
    assert tls["image"].startswith("caddy:")
    assert [p.split(":")[-1] for p in tls["ports"]] == ["443"]
    cmd = _cmd(tls)
    assert "reverse-proxy" in cmd and "--to web:8080" in cmd and ":443" in cmd
    # forwarded headers are believed from the proxy's network only, and it is the only
    # network the proxy is on
    from audit_lib.web.settings import WebSettings

    trusted = WebSettings(trusted_proxies=env["AUDIT_WEB_TRUSTED_PROXIES"]).trusted_proxy_networks
    subnet = compose["networks"]["web-edge"]["ipam"]["config"][0]["subnet"]
    assert [str(n) for n in trusted] == [subnet]
    assert tls["networks"] == ["web-edge"] and "web-edge" in web["networks"]
    assert "https://" in COMPOSE.read_text().split("x-airflow-common")[0]
