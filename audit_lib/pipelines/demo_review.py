"""The demo's release reviewer: a person approves a report draft in Airflow's Required
Actions; in the demo, which runs its DAGs in-process with ``dag.test()``, a demo user
``demo-legal`` gives that answer through Airflow's own REST API (the call the UI makes), so
the release path is exactly the production one: a HITL answer, then signing and the
decision record. The demo says so when it approves.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

REVIEWER = "demo-legal"
COMMENT = "approved by the demo's reviewer account (in production a person answers in Required Actions)"


def reviewer_auth_env(folder: Path) -> tuple[dict[str, str], str]:
    """Airflow settings for a SimpleAuthManager user ``demo-legal`` with a fresh password,
    and that password (kept in memory, never printed)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = secrets.token_urlsafe(16)
    pw_file = folder / "review-passwords.json"
    pw_file.touch(mode=0o600)
    pw_file.write_text(json.dumps({REVIEWER: password}))
    return {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{REVIEWER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48)}, password


class DemoReviewer(threading.Thread):
    """Approves every open review of ``dag_id`` until stopped (through Airflow's API app in
    this process; no port is opened). ``answered`` counts the answers; ``error`` says why it
    gave up."""

    def __init__(self, password: str, dag_id: str = "evidence_reports", timeout_s: float = 600.0) -> None:
        super().__init__(daemon=True, name="demo-reviewer")
        self._password = password
        self.dag_id, self.timeout_s = dag_id, timeout_s
        self.stop = threading.Event()
        self.answered = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            from fastapi.testclient import TestClient

            from airflow.api_fastapi.app import create_app

            client = TestClient(create_app("all"))
            r = client.post("/auth/token", json={"username": REVIEWER,
                                                 "password": self._password})
            r.raise_for_status()
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            deadline = time.monotonic() + self.timeout_s
            while not self.stop.is_set() and time.monotonic() < deadline:
                for detail in self._open(client, headers):
                    ti = detail["task_instance"]
                    url = (f"/api/v2/dags/{self.dag_id}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                           f"{ti['task_id']}/{ti['map_index']}/hitlDetails")
                    answer = client.patch(url, headers=headers, json={"chosen_options": ["Approve"],
                                                                      "params_input": {"comment": COMMENT}})
                    answer.raise_for_status()
                    self.answered += 1
                self.stop.wait(0.5)
        except Exception as exc:  # noqa: BLE001 - reported by the demo, which then fails
            self.error = f"{type(exc).__name__}: {exc}"

    def _open(self, client: Any, headers: dict[str, str]) -> list[dict]:
        r = client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails", headers=headers)
        r.raise_for_status()
        return [d for d in r.json().get("hitl_details", []) if not d["response_received"]]
