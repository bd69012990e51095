# SPDX-License-Identifier: GPL-3.0-or-later
"""The hit rate: a running average over the last events, and its history."""

import numpy as np


class HitRateHistory:
    """Running-average hit rate and a bounded history of it.

    Args:
        window_size: the number of most recent events the running average covers.
        history_length: the number of (timestamp, hit rate) points kept.
    """

    def __init__(self, *, window_size: int, history_length: int) -> None:
        self._window = np.zeros(max(1, window_size), dtype=np.bool_)
        self._times = np.zeros(max(1, history_length), dtype=np.float64)
        self._rates = np.zeros(max(1, history_length), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forgets every event."""
        self._window[:] = False
        self._window_filled = 0
        self._window_hits = 0
        self._window_next = 0
        self._history_filled = 0
        self._history_next = 0

    def add(self, timestamp: float, is_hit: bool) -> None:
        """Adds one event (timestamp in s since the epoch) to the average and the history."""
        if self._window_filled == self._window.size:
            self._window_hits -= int(self._window[self._window_next])
        else:
            self._window_filled += 1
        self._window[self._window_next] = is_hit
        self._window_hits += int(is_hit)
        self._window_next = (self._window_next + 1) % self._window.size
        self._times[self._history_next] = timestamp
        self._rates[self._history_next] = self.hit_rate
        self._history_next = (self._history_next + 1) % self._times.size
        self._history_filled = min(self._history_filled + 1, self._times.size)

    @property
    def hit_rate(self) -> float:
        """The running-average hit rate, percent (0 before any event)."""
        if self._window_filled == 0:
            return 0.0
        return 100.0 * self._window_hits / self._window_filled

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (timestamps float64 (n,) s, hit rates float64 (n,) percent), oldest first."""
        order = np.arange(self._history_next - self._history_filled, self._history_next)
        order %= self._times.size
        return self._times[order], self._rates[order]
