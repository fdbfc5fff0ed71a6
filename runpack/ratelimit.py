"""Fixed-window rate limits, as the original's (60 s windows, per IP or per runner)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from runpack.errors import RateLimited


class RateLimiter:
    def __init__(
        self, window_s: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.window = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[str, list[float]] = {}  # key -> [window start, count]

    def hit(self, key: str, limit: int) -> None:
        """Count one request; raise RateLimited past ``limit`` (0 = unlimited)."""
        if limit <= 0:
            return
        now = self.clock()
        entry = self._windows.get(key)
        if entry is None or now >= entry[0] + self.window:
            if len(self._windows) >= self.max_keys:
                self._prune(now)
            self._windows[key] = [now, 1]
            return
        entry[1] += 1
        if entry[1] > limit:
            left = entry[0] + self.window - now
            reset_ms = int((time.time() + left) * 1000)
            raise RateLimited(reset_ms, max(1, math.ceil(left)))

    def _prune(self, now: float) -> None:
        for key in [k for k, (start, _) in self._windows.items() if now >= start + self.window]:
            del self._windows[key]
        if len(self._windows) >= self.max_keys:  # still full: forget the oldest half
            for key in sorted(self._windows, key=lambda k: self._windows[k][0])[
                : self.max_keys // 2
            ]:
                del self._windows[key]
