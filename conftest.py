"""Root conftest: loads each area's fixtures from ``tests/fixtures_*.py``."""

from pathlib import Path

pytest_plugins = sorted(f"tests.{p.stem}" for p in (Path(__file__).parent / "tests").glob("fixtures_*.py"))
