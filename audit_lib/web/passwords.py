"""Password hashing with scrypt (RFC 7914, via ``hashlib.scrypt``): a random 16-byte salt
per password, parameters stored with the hash so they can be raised later, and a
constant-time comparison. The hash format is ``scrypt$N$r$p$salt_b64$hash_b64``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

# Cost parameters: N=2**14, r=8, p=1 is the interactive-login setting recommended for
# scrypt (16 MiB of memory and about 0.1 s per hash on a 2-core CPU).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
DKLEN = 32
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=DKLEN,
                          maxmem=128 * r * n * 2)


def check_password_strength(password: str) -> None:
    """Refuse passwords too short to resist guessing (or absurdly long); says which."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password: at least {MIN_PASSWORD_CHARS} characters are needed")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password: at most {MAX_PASSWORD_CHARS} characters")


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` in the self-describing format above."""
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; compares in constant time. A malformed
    stored hash or an over-long password never matches."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        actual = _derive(password, salt, int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(16))


def burn_time(password: str) -> None:
    """Spend one hash's worth of time for an unknown user, so that an unknown name takes
    as long as a wrong password (no user enumeration by timing)."""
    verify_password(password, _dummy_hash())
