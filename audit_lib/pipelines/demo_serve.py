"""``encoder-audit run demo --serve``: open what each user of the product sees, on the data
of the last ``make demo`` (``var/demo``), until stopped (Ctrl-C or SIGTERM).

- The operator: Airflow's UI (``airflow api-server`` on 127.0.0.1) over the demo's own
  Airflow metadata database, so the DAG runs the demo made are listed there with their tasks.
  No scheduler runs: nothing new is started behind the user's back.
- The DPO: the web app (``encoder-audit web serve``) over the demo's evidence store, signed
  in as the ``demo-dpo`` account.
- Evidence: the folder of the demo's PDF reports.

Both accounts get a fresh random password at every start, printed once on the terminal and
never written to a log (Airflow's simple auth manager reads its password from a file
readable by the user only). Each server runs in its own process group and is stopped by
group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from audit_lib.config import PROJECT_ROOT

DPO_USER = "demo-dpo"
OPERATOR_USER = "operator"
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0


class DemoDataMissing(ValueError):
    """The demo folder holds no finished demo (no evidence store or no Airflow metadata)."""


@dataclass
class DemoViews:
    """The running servers and what to tell the user."""

    airflow_url: str
    web_url: str
    reports_dir: Path
    operator_password: str
    dpo_password: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the user reads (the passwords appear here and nowhere else)."""
        return [
            "== what each user sees, on the demo's data (Ctrl-C stops the servers)",
            f"  operator, Airflow UI:  {self.airflow_url}  user {OPERATOR_USER}, password {self.operator_password}",
            "      the demo's DAG runs (privacy_audit, ownership_audit, evidence_reports, model_enrolment) and their tasks",
            f"  DPO, web app:          {self.web_url}  user {DPO_USER}, password {self.dpo_password}",
            "      the registered subjects and their findings",
            f"  evidence, PDF reports: {self.reports_dir}",
            "  (both passwords are new at each start and shown only here)",
        ]

    def stop(self) -> None:
        """SIGTERM each server's process group, SIGKILL what is left after the grace period."""
        for p in self.procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(timeout=5)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_demo(demo_dir: Path) -> None:
    """DemoDataMissing naming the fix when ``demo_dir`` holds no finished demo."""
    for path in (demo_dir / "evidence.sqlite", demo_dir / "airflow" / "airflow.db"):
        if not path.is_file():
            raise DemoDataMissing(f"{path} is missing: run `make demo` first (it writes the demo's data there)")


def set_dpo_password(db_url: str, password: str) -> None:
    """Create the ``demo-dpo`` account, or give it ``password`` when it exists."""
    from sqlalchemy import select

    from audit_lib.store import session_scope
    from audit_lib.store.models import WebUser
    from audit_lib.web.passwords import hash_password
    from audit_lib.web.users import add_user

    with session_scope(db_url) as s:
        user = s.scalar(select(WebUser).where(WebUser.username == DPO_USER))
        if user is None:
            add_user(s, DPO_USER, password, "dpo")
        else:
            user.password_hash = hash_password(password)
            user.role = "dpo"


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, what: str) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} stopped while starting (exit {proc.returncode}); its log: {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {READY_TIMEOUT_S:.0f} s; its log: {log}")
        time.sleep(0.5)


def start_views(demo_dir: Path | None = None, *, airflow_port: int = 8080, web_port: int = 8000,
                say: Callable[[str], None] = print) -> DemoViews:
    """Start Airflow's api-server and the DPO web app on the demo's data; returns once both
    answer. Raises DemoDataMissing before starting anything when the demo has not run."""
    from audit_lib.airflow_env import embedded_env

    demo_dir = Path(demo_dir or PROJECT_ROOT / "var" / "demo").resolve()
    check_demo(demo_dir)
    home = demo_dir / "airflow"
    db_url = f"sqlite:///{demo_dir / 'evidence.sqlite'}"
    operator_pw, dpo_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    set_dpo_password(db_url, dpo_pw)
    pw_file = home / "passwords.json"
    pw_file.touch(mode=0o600, exist_ok=True)
    os.chmod(pw_file, 0o600)
    pw_file.write_text(json.dumps({OPERATOR_USER: operator_pw}))

    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    base.update(AUDIT_DATA_DIR=str(demo_dir), AUDIT_DATABASE_URL=db_url, HF_HUB_OFFLINE="1")
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    airflow_env = {**base, **embedded_env(home), "AIRFLOW_HOME": str(home),
                   "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{OPERATOR_USER}:op",
                   "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
                   "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                   "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{airflow_port}",
                   "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{airflow_port}/execution/"}
    web_env = {k: v for k, v in base.items() if k != "AUDIT_WEB_SECRET_KEY"}

    views = DemoViews(airflow_url=f"http://127.0.0.1:{airflow_port}/", web_url=f"http://127.0.0.1:{web_port}/",
                      reports_dir=demo_dir / "reports", operator_password=operator_pw, dpo_password=dpo_pw)
    logs = demo_dir / "serve"
    logs.mkdir(exist_ok=True)
    try:
        af_log, web_log = logs / "airflow-api-server.log", logs / "web.log"
        say(f"== starting Airflow's api-server on 127.0.0.1:{airflow_port} and the DPO web app on "
            f"127.0.0.1:{web_port} (logs in {logs})")
        with af_log.open("w") as fa:
            views.procs.append(subprocess.Popen(
                [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(airflow_port)],
                cwd=PROJECT_ROOT, env=airflow_env, stdout=fa, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
        with web_log.open("w") as fw:
            views.procs.append(subprocess.Popen(
                [sys.executable, "-m", "audit_lib.cli", "web", "serve", "--host", "127.0.0.1", "--port", str(web_port)],
                cwd=PROJECT_ROOT, env=web_env, stdout=fw, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
        _wait_ready(f"{views.web_url}login", views.procs[1], web_log, "the DPO web app")
        _wait_ready(f"{views.airflow_url}api/v2/monitor/health", views.procs[0], af_log, "Airflow's api-server")
    except BaseException:
        views.stop()
        raise
    return views


def serve(demo_dir: Path | None = None, *, airflow_port: int = 8080, web_port: int = 8000) -> int:
    """Start the views, print how to open them, and keep them up until SIGINT or SIGTERM
    (or until one server stops by itself: exit status 1). Returns the exit status."""
    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    views = None
    try:
        try:
            views = start_views(demo_dir, airflow_port=airflow_port, web_port=web_port, say=say)
        except RuntimeError as exc:  # a server did not come up: its log says why
            sys.stderr.write(f"error: {exc}\n")
            return 1
        for line in views.lines():
            say(line)
        while not stop["now"]:
            dead = [p for p in views.procs if p.poll() is not None]
            if dead:
                say(f"a server stopped by itself (exit {dead[0].returncode}); stopping the other")
                return 1
            time.sleep(0.5)
        say("stopping the servers")
        return 0
    finally:
        if views is not None:
            views.stop()
            say("stopped")
        for s, h in old.items():
            signal.signal(s, h)
