"""Service settings, read from the environment (prefix ``AUDIT_``) behind a cached getter.

Nothing is created at import time: a DAG file or the CLI can import this module without
touching a database.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """What an operator can set. Secrets (API keys) are never settings: they are read by
    name from an Airflow Connection or the environment when a request is made."""

    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore")

    data_dir: Path = Field(default=PROJECT_ROOT / "var", description="artefacts, caches, reports")
    database_url: str = Field(default="", description="SQLAlchemy URL of the evidence store")
    shared_data_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "data", description="real images for the zoo"
    )
    allow_hub_downloads: bool = Field(default=False, description="let open_clip reach a hub")
    allow_python_factories: bool = Field(
        default=False, description="let owned models name a python:MODULE:FUNCTION factory (runs its code)"
    )
    min_image_side: int = Field(default=32, description="smallest accepted image side, pixels")
    max_image_pixels: int = Field(default=40_000_000, description="decompression-bomb limit")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, description="largest accepted file")

    @property
    def resolved_database_url(self) -> str:
        """The evidence store URL: ``AUDIT_DATABASE_URL`` or a SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'evidence.sqlite').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
