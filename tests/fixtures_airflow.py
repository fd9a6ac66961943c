"""Airflow for the tests: a temporary AIRFLOW_HOME with its own SQLite metadata database.

Airflow reads its configuration on first import, so the variables are set when pytest
loads this plugin, before any test imports airflow. The metadata database is migrated
once per session (``airflow db migrate``) and the ``gpu`` pool created.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from audit_lib.airflow_env import DAGS_FOLDER, embedded_env

AIRFLOW_TEST_HOME = Path(tempfile.mkdtemp(prefix="encoder-audit-airflow-"))
os.environ.update(embedded_env(AIRFLOW_TEST_HOME))
atexit.register(shutil.rmtree, AIRFLOW_TEST_HOME, True)


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The migrated test AIRFLOW_HOME (with the ``gpu`` pool)."""
    pytest.importorskip("airflow", reason="apache-airflow is not installed")
    from audit_lib.airflow_env import ensure_pools, migrate_metadata

    migrate_metadata()
    ensure_pools()
    return AIRFLOW_TEST_HOME


@pytest.fixture(scope="session")
def dagbag(airflow_home):
    """The project's DAGs parsed as the dag-processor would."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="session")
def airflow_dags(dagbag) -> dict:
    """dag_id -> DAG of the project's DAGs."""
    return dict(dagbag.dags)


@pytest.fixture
def sqlite_db_url(sqlite_database_url, monkeypatch, tmp_path):
    """The ``db_url`` fixture's SQLite store alone (for checks that need no second backend)."""
    from audit_lib.config import get_settings
    from tests.conftest import _clear

    _clear(sqlite_database_url)
    monkeypatch.setenv("AUDIT_DATABASE_URL", sqlite_database_url)
    monkeypatch.setenv("AUDIT_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield sqlite_database_url
    get_settings.cache_clear()


FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "orl"


def register_small_registry(tiny_clip: tuple[str, Path], small_cnn: tuple[str, Path]) -> dict:
    """Register, in the store selected by AUDIT_DATABASE_URL: two ORL people (3 reference
    photos and 3 claimed images each), a tiny CLIP (image + text) and a small CNN (image
    only) with seeded random weights, and 12 photos of other ORL people as the reference
    non-members of every model. Returns the ids."""
    from audit_lib import registry
    from audit_lib.images import check_image_bytes
    from audit_lib.registry import ImageLimits
    from audit_lib.pipelines.references import write_reference_nonmembers
    from audit_lib.store import session_scope

    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")

    def photos(person: int, numbers) -> list:
        return [check_image_bytes((FACES / f"s{person}" / f"{i}.pgm").read_bytes(), name=f"s{person}-{i}.pgm",
                                  **ImageLimits.from_settings().as_kwargs())
                for i in numbers]

    with session_scope() as s:
        subjects = [registry.add_subject(s, name=name, legal_basis="GDPR Art. 6(1)(f), test",
                                         photos=photos(p, (1, 2, 3)), claimed=photos(p, (4, 5, 6)), sex=sex).id
                    for p, name, sex in ((1, "Ana Ferreira", "f"), (2, "Jonas Berg", "m"))]
        models = [registry.add_model(s, name=n, kind="checkpoint", role="suspect", capabilities=c,
                                     architecture=a, weights_path=w).id
                  for n, c, (a, w) in (("tiny-clip-random", "image,text", tiny_clip),
                                       ("small-cnn-random", "image", small_cnn))]
    refs = [(f"s{p}-{i}.pgm", (FACES / f"s{p}" / f"{i}.pgm").read_bytes()) for p in (35, 36, 37, 38) for i in (1, 2, 3)]
    for name in ("tiny-clip-random", "small-cnn-random"):
        write_reference_nonmembers(name, refs)
    return {"subjects": subjects, "models": models}
