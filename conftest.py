"""Root conftest: loads each area's fixtures from ``tests/fixtures_*.py``.

Under pytest-xdist (``make test`` runs two workers) each worker computes on one thread, set
here before anything imports torch: the tests' models are tiny and lose more to thread
hand-offs than they gain, and two single-threaded workers keep both cores busy. Training
that fixes its own thread count (the zoo's, part of its config hash) is unaffected.
"""

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

pytest_plugins = sorted(f"tests.{p.stem}" for p in (Path(__file__).parent / "tests").glob("fixtures_*.py"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` each test module without an ``xdist_group`` mark is a group
    of its own: its tests stay on one worker, so module-scoped fixtures (trained cases,
    servers) are built once rather than once per worker."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
