# SPDX-License-Identifier: GPL-3.0-or-later
"""Sending frames at a steady rate, as a detector does."""

import threading
import time
from typing import Iterator


def paced_indices(count: int | None, rate: float, stop: threading.Event) -> Iterator[int]:
    """Yields 0, 1, 2, ... each at its time on a ``rate`` frames/s schedule from the first.

    Args:
        count: how many indices (None: until ``stop`` is set).
        rate: frames per second (0 or less: as fast as possible).
        stop: ends the sequence when set.
    """
    started = time.monotonic()
    index = 0
    while not stop.is_set() and (count is None or index < count):
        if rate > 0:
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield index
        index += 1
