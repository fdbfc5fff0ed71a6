"""Reconnect delays: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``next()`` is uniform in [0, min(cap, base * 2**n)] for the n-th failure in a row."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 60))
        self.failures += 1
        return self.rng() * ceiling

    def reset(self) -> None:
        self.failures = 0
