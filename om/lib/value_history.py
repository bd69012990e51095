# SPDX-License-Identifier: GPL-3.0-or-later
"""A bounded history of (timestamp, value) points, oldest dropped first."""

import numpy as np


class ValueHistory:
    """The last ``length`` (timestamp, value) points.

    Args:
        length: the number of points kept (>= 1).
    """

    def __init__(self, *, length: int) -> None:
        self._times = np.zeros(max(1, length), dtype=np.float64)
        self._values = np.zeros(max(1, length), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forgets every point."""
        self._filled = 0
        self._next = 0

    def add(self, timestamp: float, value: float) -> None:
        """Adds one point (timestamp in s since the epoch)."""
        self._times[self._next] = timestamp
        self._values[self._next] = value
        self._next = (self._next + 1) % self._times.size
        self._filled = min(self._filled + 1, self._times.size)

    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (timestamps float64 (n,), values float64 (n,)), oldest first."""
        order = np.arange(self._next - self._filled, self._next) % self._times.size
        return self._times[order], self._values[order]
