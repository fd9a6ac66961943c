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
    allow_private_endpoints: bool = Field(
        default=False, description="let APIs be registered on RFC 1918 / ULA private addresses"
    )
    min_image_side: int = Field(default=32, description="smallest accepted image side, pixels")
    max_image_pixels: int = Field(default=40_000_000, description="decompression-bomb limit")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, description="largest accepted file")
    migration_database_url: str = Field(
        default="", description="the owner role's URL: migrations and retention purges (default: database_url)")
    # retention periods in days (GDPR Art. 5(1)(e)); 0 keeps that kind of record indefinitely
    retention_cache_days: int = Field(default=365, ge=0, description="query-cache answers")
    retention_evidence_days: int = Field(default=2190, ge=0, description="audit runs' evidence and findings")
    retention_reports_days: int = Field(default=2190, ge=0, description="rendered reports")
    retention_subject_images_days: int = Field(default=730, ge=0, description="data subjects' photos")
    release_approvers: str = Field(
        default="", description="Airflow user ids (comma-separated) who may approve a report; empty: any user with HITL access")
    notify_dpo: str = Field(default="", description="e-mail addresses (comma-separated) of the DPO")
    notify_legal: str = Field(default="", description="e-mail addresses (comma-separated) of legal")
    notify_operators: str = Field(default="", description="e-mail addresses told when an audit task fails")
    notify_from: str = Field(default="encoder-audit@localhost", description="sender of the notifications")
    smtp_conn_id: str = Field(default="smtp_default", description="Airflow Connection of the SMTP server")
    # PAdES signing of reports (audit_lib/reports/pades.py). The key is a PKCS#12 file, or a
    # PEM key with its PEM certificate; its password is read from the environment variable
    # named by ``report_signer_password_env`` (an ``AUDIT_CRED_...`` name), never a setting.
    report_signer_pkcs12: Path | None = Field(default=None, description="PKCS#12 file of the report signer")
    report_signer_key: Path | None = Field(default=None, description="PEM private key of the report signer")
    report_signer_cert: Path | None = Field(default=None, description="PEM certificate of the report signer")
    report_signer_chain: Path | None = Field(default=None, description="PEM intermediates to embed")
    report_signer_password_env: str = Field(default="", description="AUDIT_CRED_... variable holding the key password")
    report_trust_root: Path | None = Field(default=None, description="PEM trust root(s) for report verify")
    tsa_url: str = Field(default="", description="RFC 3161 time-stamping authority URL")
    tsa_cert: Path | None = Field(default=None, description="PEM certificate (or root) of the TSA")
    server_max_request_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0,
        description="reference server: largest request body, refused with 413 before it is parsed")
    server_max_request_pixels: int = Field(
        default=64_000_000, gt=0,
        description="reference server: most pixels (all images together) in one request")
    server_docs: bool = Field(default=False,
                              description="reference server: serve /docs, /redoc and /openapi.json")

    @property
    def resolved_database_url(self) -> str:
        """The evidence store URL: ``AUDIT_DATABASE_URL`` or a SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'evidence.sqlite').resolve()}"

    @property
    def resolved_migration_database_url(self) -> str:
        """The owner role's URL: ``AUDIT_MIGRATION_DATABASE_URL`` or the evidence store URL."""
        return self.migration_database_url or self.resolved_database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
