"""A real Airflow deployment of separate processes on this machine (for a local UI, the
Celery tests and the pipeline benchmark).

Each component (api-server, scheduler, dag-processor, Celery workers) is started with
``setsid`` (its own process group), its PID kept and its output written to a log file;
``stop()`` ends each group with SIGTERM, waits a bounded time, then SIGKILL. Airflow's
``airflow standalone`` is avoided: it leaves orphaned workers behind when stopped.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from audit_lib.airflow_env import embedded_env
from audit_lib.server.testing import free_port

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    log_path: Path

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class LocalDeployment:
    """Airflow components as separate processes sharing one metadata database.

    ``executor`` "CeleryExecutor" needs ``broker_url`` (Redis) and a PostgreSQL
    ``metadata_url``; "LocalExecutor" runs tasks in the scheduler's own workers.
    """

    home: Path
    metadata_url: str
    executor: str = "LocalExecutor"
    broker_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    components: list[Component] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        """The environment every component shares (secrets generated per deployment)."""
        home = Path(self.home).resolve()
        env = {**os.environ, **embedded_env(home, metadata_url=self.metadata_url)}
        env.update({
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt"),
            "AIRFLOW__CORE__FERNET_KEY": self._fernet(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "audit_lib.airflow_env.worker_hostname",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        })
        if self.broker_url:
            env["AIRFLOW__CELERY__BROKER_URL"] = self.broker_url
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + self.metadata_url.replace("+psycopg2", "")
        env.update(self.extra_env)
        return env

    def _secret(self, name: str) -> str:
        path = Path(self.home) / f".{name}-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text()

    def _fernet(self) -> str:
        path = Path(self.home) / ".fernet-key"
        if not path.exists():
            from cryptography.fernet import Fernet

            path.write_text(Fernet.generate_key().decode())
            path.chmod(0o600)
        return path.read_text()

    def airflow(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run one ``airflow`` CLI command to completion (bounded)."""
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, check=True)

    def init(self, gpu_slots: int = 1) -> None:
        """Migrate the metadata database, write the admin's password, create the gpu pool."""
        Path(self.home).mkdir(parents=True, exist_ok=True)
        (Path(self.home) / "passwords.json").write_text(json.dumps({"admin": self.admin_password}))
        self.airflow("db", "migrate", timeout=300)
        self.airflow("pools", "set", "gpu", str(gpu_slots), "model work: one slot per GPU")

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Component:
        """Start ``airflow ARGS`` in its own session (process group), output to a log file."""
        log_path = Path(self.home) / f"{name}.log"
        fh = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed by stop()
        proc = subprocess.Popen([sys.executable, "-m", "airflow", *args], env={**self.env(), **(env or {})},
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(self.home))
        fh.close()
        comp = Component(name, proc, log_path)
        self.components.append(comp)
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return comp

    def start_core(self) -> None:
        """api-server, scheduler and dag-processor."""
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")

    def start_celery_worker(self, name: str, queues: str, concurrency: int = 1) -> Component:
        """A Celery worker serving ``queues``; its task instances report ``name`` as hostname."""
        return self.start(name, "celery", "worker", "--queues", queues, "--concurrency", str(concurrency),
                          "--celery-hostname", f"{name}@%h", "--skip-serve-logs", "--without-gossip",
                          "--without-mingle", env={"AUDIT_WORKER_NAME": name})

    def check_alive(self) -> None:
        """Raise, with the log's tail, when a component has exited."""
        for comp in self.components:
            if comp.proc.poll() is not None:
                raise RuntimeError(f"{comp.name} exited with {comp.proc.returncode}:\n{comp.tail()}")

    def wait_healthy(self, timeout: float = 120) -> None:
        """Wait until the api-server answers and the scheduler and dag-processor report healthy."""
        import httpx

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                r = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
                body = r.json()
                last = json.dumps(body)
                if r.status_code == 200 and body.get("scheduler", {}).get("status") == "healthy" and \
                        body.get("dag_processor", {}).get("status") == "healthy":
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            time.sleep(2)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f} s: {last}")

    def token(self) -> str:
        """A bearer token for the REST API (SimpleAuthManager admin)."""
        import httpx

        r = httpx.post(f"{self.api_url}/auth/token", json={"username": "admin", "password": self.admin_password},
                       timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def client(self) -> httpx.Client:
        """An httpx client for the REST API, signed in as the admin."""
        import httpx

        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=30)

    def wait_for_dags(self, client: httpx.Client, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has registered ``dag_ids``."""
        def registered() -> bool:
            r = client.get("/api/v2/dags", params={"limit": 100})
            return r.status_code == 200 and {d["dag_id"] for d in r.json()["dags"]} >= set(dag_ids)

        self.poll(registered, timeout, f"the dag-processor to register {', '.join(dag_ids)}", every=2)

    def trigger(self, client: httpx.Client, dag_id: str, conf: dict) -> str:
        """Unpause ``dag_id`` and start a run of it with ``conf``; returns the run id."""
        r = client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        r.raise_for_status()
        r = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        r.raise_for_status()
        return r.json()["dag_run_id"]

    def wait_for_run(self, client: httpx.Client, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until a DAG run succeeds or fails; returns its state."""
        def ended() -> str | None:
            r = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            r.raise_for_status()
            return r.json()["state"] if r.json()["state"] in ("success", "failed") else None

        return self.poll(ended, timeout, f"{dag_id} run {run_id} to end")

    def poll(self, done: Callable[[], T | None], timeout: float, what: str, every: float = 1.0) -> T:
        """Call ``done`` every ``every`` seconds until it returns something true, and return
        that; RuntimeError when a component exits meanwhile, TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if value := done():
                return value
            time.sleep(every)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM each component's process group, wait up to ``timeout``, then SIGKILL."""
        for comp in reversed(self.components):
            if comp.proc.poll() is None:
                try:
                    os.killpg(comp.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for comp in reversed(self.components):
            try:
                comp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the group (task processes, gunicorn/uvicorn workers)
                os.killpg(comp.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            comp.proc.wait(timeout=10)
        self.components.clear()
