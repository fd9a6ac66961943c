"""Sign-in throttling: at most ``max_failures`` failed sign-ins per user name and per
client address within a sliding window; past that, sign-in answers 429 with Retry-After
until the oldest failure leaves the window, without checking the password (so a guessing
run costs the server nothing either).

Held in the web app's memory: one app process is the deployment this is made for (several
worker processes would each allow the limit). A success clears the user's count, not the
client's, so one valid account cannot be used to reset a guessing run from that address.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class SignInThrottle:
    """Failed sign-ins per key (``user:NAME``, ``client:ADDRESS``) in a sliding window."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = float(window_s)
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(username: str, client: str | None) -> list[str]:
        return [f"user:{username.casefold()}"] + ([f"client:{client}"] if client else [])

    def _recent(self, key: str, now: float) -> deque[float]:
        stamps = self._failures.get(key, deque())
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
        if not stamps:
            self._failures.pop(key, None)
        return stamps

    def retry_after(self, keys: list[str]) -> int | None:
        """None when a sign-in may be tried, else whole seconds to wait."""
        now = time.monotonic()
        with self._lock:
            waits = [stamps[0] + self.window_s - now for key in keys
                     if len(stamps := self._recent(key, now)) >= self.max_failures]
        return max(1, math.ceil(max(waits))) if waits else None

    def record_failure(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                stamps = self._recent(key, now)
                stamps.append(now)
                self._failures[key] = stamps

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
