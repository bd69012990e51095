# SPDX-License-Identifier: GPL-3.0-or-later
"""The monitor talks while it waits: what a source has sent while no data came.

A wrong detector URL and a detector that is not streaming yet look the same from the inside:
nothing arrives. So every ``interval`` seconds without data, the part that receives a source
logs one line naming the source and what it has received since the last data (or the start):
nothing, only some of the modules, or only messages it could not use. The receiver describes
that itself (it knows its streams); this class keeps the time.
"""

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("om")

WAITING_REPORT_INTERVAL = 5.0
"""Seconds without data between two waiting reports."""


class WaitingReport:
    """Logs, every ``interval`` s without data, what the source has sent meanwhile.

    Args:
        source: how the source is named in the line (e.g. its URLs).
        describe: returns what was received since the last data, e.g. "nothing received";
            called only when a line is due.
        interval: seconds without data between two lines.
    """

    def __init__(self, source: str, describe: Callable[[], str],
                 interval: float = WAITING_REPORT_INTERVAL) -> None:
        self._source = source
        self._describe = describe
        self._interval = interval
        self._since = time.monotonic()  # the last data, or the start
        self._last_line = self._since

    def data_arrived(self) -> None:
        """Notes that data came: the next line is due ``interval`` s after the last data."""
        self._since = self._last_line = time.monotonic()

    def poll(self) -> bool:
        """Logs the line when it is due; returns whether it did."""
        now = time.monotonic()
        if now - self._last_line < self._interval:
            return False
        self._last_line = now
        logger.warning("waiting for data from %s: nothing usable for %.0f s; %s",
                       self._source, now - self._since, self._describe())
        return True
