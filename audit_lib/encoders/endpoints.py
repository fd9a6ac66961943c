"""Where an API's credential may be sent: the checks on a registered endpoint URL.

The key goes with every request, so the endpoint decides who receives it. Refused at
registration (and when probing an unregistered API):

- anything but ``http(s)://HOST[:PORT]/...``;
- user info (``user:pass@``) and secret-looking query parameters (``?api_key=``): they
  would be stored in the database and printed by ``models list``; the key belongs in a
  credential (``--credential AUDIT_CRED_...``), which the adapter's auth scheme sends;
- link-local addresses (169.254.0.0/16, fe80::/10) and cloud metadata services
  (169.254.169.254, fd00:ec2::254, metadata.google.internal): a key or a request sent there
  reaches the machine's own cloud credentials;
- private addresses (RFC 1918, IPv6 ULA) unless ``AUDIT_ALLOW_PRIVATE_ENDPOINTS`` is set;
  loopback (127.0.0.0/8, ::1, ``localhost``) stays allowed: the local reference server.

IPv4 addresses written in the legacy forms the resolver also accepts (``2852039166``,
``0xa9fea9fe``) are read as addresses. Host names other than the metadata names are not
resolved here (a DNS answer at registration says nothing about the answer at audit time).

An adapter's call paths are appended to the endpoint; :func:`check_adapter_hosts` refuses
one that would change the host or port the request goes to.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["EndpointError", "SECRET_QUERY_KEYS", "check_adapter_hosts", "check_endpoint", "redact_endpoint"]

#: query parameters that carry a secret; compared case-insensitively
SECRET_QUERY_KEYS = frozenset({"key", "api_key", "apikey", "token", "access_token", "secret",
                               "password", "sig", "signature"})
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata",
                            "instance-data", "instance-data.ec2.internal"})
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"),
                                ipaddress.ip_address("fd00:ec2::254"),
                                ipaddress.ip_address("169.254.170.2")})  # ECS task credentials
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


class EndpointError(ValueError):
    """An endpoint URL that may not receive a credential; the message names the rule."""


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` denotes, legacy IPv4 forms included, or None for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.inet_aton(host))  # 2852039166, 0xa9fea9fe, 169.254.43518
        except (OSError, ValueError):
            return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def check_endpoint(endpoint_url: str | None, *, allow_private: bool = False) -> str:
    """``endpoint_url`` if an API's credential may be sent there, else :class:`EndpointError`."""
    text = str(endpoint_url or "")
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise EndpointError(f"endpoint: {text!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise EndpointError(f"endpoint: {text!r} is not an http(s) URL")
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise EndpointError(f"endpoint: {text!r} contains spaces or control characters")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EndpointError("endpoint: the URL holds user info (user:password@); put the secret in "
                            "an environment variable named AUDIT_CRED_... and give --credential NAME")
    secret_keys = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)
                          if k.strip().lower() in SECRET_QUERY_KEYS})
    if secret_keys:
        raise EndpointError(f"endpoint: the URL holds a secret in its query ({', '.join(secret_keys)}=...); "
                            "put the key in an environment variable named AUDIT_CRED_... and give "
                            "--credential NAME (the preset's auth scheme sends it)")
    if host.lower() in METADATA_HOSTS:
        raise EndpointError(f"endpoint: {host} is a cloud metadata service; it never receives a credential")
    ip = _address(host)
    if ip is None:
        return text
    if ip in METADATA_ADDRESSES:
        raise EndpointError(f"endpoint: {ip} is a cloud metadata address; it never receives a credential")
    if ip.is_loopback:
        return text
    if ip.is_link_local:
        raise EndpointError(f"endpoint: {ip} is a link-local address; an API is never registered there")
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        raise EndpointError(f"endpoint: {ip} is not the address of a host")
    if ip.is_private and not allow_private:
        raise EndpointError(f"endpoint: {ip} is a private address; set AUDIT_ALLOW_PRIVATE_ENDPOINTS=true "
                            "to register APIs on the local network")
    return text


def check_adapter_hosts(endpoint_url: str, adapter: dict[str, Any]) -> None:
    """Refuse a stored adapter whose call path, appended to ``endpoint_url``, sends the
    request (and the credential) to another host or port than the endpoint's."""
    base = endpoint_url.rstrip("/")
    netloc = urlsplit(base).netloc
    for kind in ("images", "texts", "info"):
        path = ((adapter or {}).get(kind) or {}).get("path") or ""
        try:
            target = urlsplit(base + path).netloc
        except ValueError:
            target = None
        if target != netloc:
            raise EndpointError(f"adapter.{kind}.path: {path!r} appended to the endpoint goes to "
                                f"{target or 'an invalid address'!s}, not the registered host {netloc}; "
                                "give a path relative to the endpoint")


def redact_endpoint(endpoint_url: str | None) -> str | None:
    """``endpoint_url`` for display: user info and secret-looking query values replaced by
    ``<secret>`` (rows stored before :func:`check_endpoint` refused them)."""
    if not endpoint_url:
        return endpoint_url
    try:
        parts = urlsplit(endpoint_url)
        netloc = parts.netloc.rpartition("@")[2]
        if "@" in parts.netloc:
            netloc = "<secret>@" + netloc
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if "@" not in parts.netloc and not any(k.strip().lower() in SECRET_QUERY_KEYS for k, _ in pairs):
            return endpoint_url
        query = [(k, "<secret>" if k.strip().lower() in SECRET_QUERY_KEYS else v) for k, v in pairs]
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="<>"), parts.fragment))
    except ValueError:
        return "<unreadable URL>"
