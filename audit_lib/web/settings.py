"""The web app's settings (env prefix ``AUDIT_WEB_``) and its session signing key.

The signing key is a secret: it comes from ``AUDIT_WEB_SECRET_KEY`` or, when that is not
set, from ``<data_dir>/web-secret-key``, created with mode 0600 on first run. It is never
logged, rendered or stored in the database.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from audit_lib.config import get_settings

SECRET_FILE_NAME = "web-secret-key"
MIN_SECRET_CHARS = 32


class WebSettings(BaseSettings):
    """What an operator can set for the web app."""

    model_config = SettingsConfigDict(env_prefix="AUDIT_WEB_", extra="ignore")

    secret_key: SecretStr | None = Field(default=None, description="session signing key; no default")
    cookie_secure: bool = Field(default=False, description="send the session cookie over HTTPS only")
    cookie_samesite: str = Field(default="lax", pattern="^(lax|strict)$",
                                 description="SameSite of the session cookie")
    session_max_age_s: int = Field(default=8 * 3600, gt=0, description="a sign-in lasts this long")
    max_request_bytes: int = Field(default=50 * 1024 * 1024, gt=0,
                                   description="largest request body (all uploads together)")
    max_files: int = Field(default=100, gt=0, description="most files in one registration")
    reports_dir: Path | None = Field(default=None,
                                     description="PDF reports folder (default <data_dir>/reports)")
    trusted_proxies: str = Field(
        default="", description="comma-separated addresses or networks of the reverse proxies "
                                "whose X-Forwarded-For is believed (default: none)")
    signin_max_failures: int = Field(default=5, gt=0,
                                     description="failed sign-ins per user and per client address")
    signin_window_s: int = Field(default=15 * 60, gt=0,
                                 description="... within this many seconds, then 429 until it passes")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"AUDIT_WEB_TRUSTED_PROXIES: {part!r} is not an address or "
                                 "network (e.g. 10.0.0.5 or 172.16.0.0/12)") from None
        return value

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The proxies whose forwarded headers are believed."""
        return tuple(ipaddress.ip_network(p.strip(), strict=False)
                     for p in self.trusted_proxies.split(",") if p.strip())

    @property
    def resolved_reports_dir(self) -> Path:
        """The only folder reports are ever served from."""
        return (self.reports_dir or get_settings().data_dir / "reports").resolve()


@lru_cache(maxsize=1)
def get_web_settings() -> WebSettings:
    """The process-wide web settings; tests call ``get_web_settings.cache_clear()``."""
    return WebSettings()


def load_secret_key(settings: WebSettings) -> bytes:
    """The session signing key: from the settings, else from the data dir (created once,
    readable by the owner only). A configured key shorter than 32 characters is refused."""
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value()
        if len(value) < MIN_SECRET_CHARS:
            raise ValueError(f"AUDIT_WEB_SECRET_KEY is too short: use at least {MIN_SECRET_CHARS} "
                             "random characters (e.g. `python -c 'import secrets; "
                             "print(secrets.token_hex(32))'`)")
        return value.encode()
    path = get_settings().data_dir / SECRET_FILE_NAME
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if len(value) < MIN_SECRET_CHARS:
            raise ValueError(f"{path} holds a key shorter than {MIN_SECRET_CHARS} characters; "
                             "delete the file to have a new one generated") from None
        return value.encode()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
