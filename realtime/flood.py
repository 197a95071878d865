"""Per-socket flood limit: a token bucket over frames received."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` frames per second on average, bursts of up to `burst` frames."""

    __slots__ = ("_clock", "_level", "_stamp", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._level = burst
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty (the frame is over the limit)."""
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._level < 1:
            return False
        self._level -= 1
        return True
