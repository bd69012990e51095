# SPDX-License-Identifier: GPL-3.0-or-later
"""Events per second over a sliding time window."""

import collections
import time


class EventRateMeter:
    """Counts events and gives their rate over the last ``window`` seconds.

    Args:
        window: the length of the sliding window, s.
    """

    def __init__(self, window: float = 2.0) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.count = 0

    def add(self, count: int = 1) -> None:
        """Counts ``count`` more events now."""
        self.count += count
        now = time.monotonic()
        self._samples.append((now, self.count))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()

    def rate(self) -> float:
        """Events per second over the window (0 with fewer than two samples)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if time.monotonic() - t1 > self._window:
            return 0.0
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
