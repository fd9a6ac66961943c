"""Airflow's environment for the embedded default (``make demo``, tests, a local UI).

Airflow reads its configuration when it is first imported, so these variables must be set
before anything imports ``airflow``. The embedded default keeps Airflow's own metadata
database (SQLite under ``{AUDIT_DATA_DIR}/airflow``) apart from the evidence store
(``AUDIT_DATABASE_URL``): Airflow 3 task code may not touch its metadata database, and both
use an ``alembic_version`` table.

The ``gpu`` pool bounds how many model tasks run at once: one slot per GPU, and one slot
on a machine without a GPU (the same DAGs then run their model work on the CPU, one model
task at a time, which is what two CPU cores can carry).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from audit_lib.config import PROJECT_ROOT

log = logging.getLogger(__name__)

DAGS_FOLDER = PROJECT_ROOT / "dags"
GPU_POOL = "gpu"


def embedded_env(home: Path, *, metadata_url: str | None = None, parallelism: int = 4) -> dict[str, str]:
    """The variables an embedded Airflow needs: its home, our DAGs folder, no examples,
    a metadata database (SQLite in ``home`` unless ``metadata_url`` is given)."""
    home = Path(home).resolve()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url or f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "HF_HUB_OFFLINE": "1",
    }


def configure_embedded(home: Path | None = None, *, metadata_url: str | None = None,
                       override: bool = False) -> Path:
    """Set the embedded Airflow's variables in this process (before ``import airflow``).

    Variables the operator already set win unless ``override``. Returns AIRFLOW_HOME.
    Raises RuntimeError when airflow was imported already with another home, because
    Airflow would silently keep its first configuration.
    """
    import sys

    if home is None:
        from audit_lib.config import get_settings

        home = get_settings().data_dir / "airflow"
    env = embedded_env(Path(home), metadata_url=metadata_url)
    for key, value in env.items():
        if override or key not in os.environ:
            os.environ[key] = value
    actual = Path(os.environ["AIRFLOW_HOME"])
    actual.mkdir(parents=True, exist_ok=True)
    if "airflow" in sys.modules and override:
        from airflow.configuration import conf

        if conf.get("core", "dags_folder") != os.environ["AIRFLOW__CORE__DAGS_FOLDER"]:
            raise RuntimeError("airflow was imported before configure_embedded(): set "
                               "AIRFLOW_HOME and AIRFLOW__CORE__DAGS_FOLDER first")
    return actual


def gpu_count() -> int:
    """How many NVIDIA GPUs this machine has (``nvidia-smi -L``), without importing torch."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def gpu_pool_slots() -> int:
    """Slots of the ``gpu`` pool: one per GPU, one on a CPU-only machine."""
    return max(1, gpu_count())


def migrate_metadata() -> None:
    """``airflow db migrate`` for the configured metadata database (idempotent, ~7 s)."""
    from airflow.utils.db import upgradedb

    upgradedb()


def ensure_pools(slots: int | None = None) -> int:
    """Create or resize the ``gpu`` pool; returns its slot count."""
    from airflow.models.pool import Pool

    slots = gpu_pool_slots() if slots is None else slots
    Pool.create_or_update_pool(name=GPU_POOL, slots=slots, include_deferred=False,
                               description="model work: one slot per GPU (1 on a CPU-only machine)")
    log.info("pool %s has %d slot(s)", GPU_POOL, slots)
    return slots


def init_embedded(home: Path | None = None) -> Path:
    """Configure, migrate the metadata database and create the pools: everything
    ``dag.test()`` needs. Returns AIRFLOW_HOME."""
    path = configure_embedded(home)
    migrate_metadata()
    ensure_pools()
    return path


def fresh_embedded(folder: Path) -> Path:
    """Empty ``folder`` and point the evidence store (SQLite) and an embedded Airflow at it,
    for a self-contained run (the demo, the pipeline benchmark). Must run before anything
    imports airflow. Returns AIRFLOW_HOME."""
    from audit_lib.config import get_settings

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ["AUDIT_DATA_DIR"] = str(folder)
    os.environ["AUDIT_DATABASE_URL"] = f"sqlite:///{folder / 'evidence.sqlite'}"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    return configure_embedded(folder / "airflow", override=True)


def load_dags() -> dict[str, Any]:
    """The project's DAGs by id, parsed from ``dags/``; RuntimeError naming the files that
    failed to import."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG files failed to import: {bag.import_errors}")
    return dict(bag.dags)


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` for our workers: ``AUDIT_WORKER_NAME`` when set (so
    several workers on one host, e.g. a CPU and a GPU worker, are told apart in the task
    instances and the UI), else the host's name."""
    import socket

    return os.environ.get("AUDIT_WORKER_NAME") or socket.getfqdn()
