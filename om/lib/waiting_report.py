# SPDX-License-Identifier: GPL-3.0-or-later
"""The monitor talks while it waits: what a source has sent while no data came.

A wrong detector URL and a detector that is not streaming yet look the same from the inside:
nothing arrives. So after ``interval`` seconds without data, the part that receives a source
logs one line naming the source and what it has received since the last data (or the start):
nothing, only some of the modules, or only messages it could not use. The receiver describes
that itself (it knows its streams); this class keeps the time. While nothing comes, the time
between two lines doubles, up to ``longest_interval`` (a monitor left waiting between runs
does not fill its log), and starts again from ``interval`` after data.
"""

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("om")

WAITING_REPORT_INTERVAL = 5.0
"""Seconds without data before the first waiting report."""
LONGEST_WAITING_REPORT_INTERVAL = 60.0
"""The most seconds between two waiting reports."""


class WaitingReport:
    """Logs, after ``interval`` s without data and then less and less often, what the source
    has sent meanwhile (lines at 5, 10, 20, 40, 80 s, then every 60 s, with the defaults).

    Args:
        source: how the source is named in the line (e.g. its URLs).
        describe: returns what was received since the last data, e.g. "nothing received";
            called only when a line is due.
        interval: seconds without data before the first line (and the second: then twice as
            long each time).
        longest_interval: the most seconds between two lines.
        clock: the clock, in seconds (``time.monotonic``).
    """

    def __init__(self, source: str, describe: Callable[[], str],
                 interval: float = WAITING_REPORT_INTERVAL,
                 longest_interval: float = LONGEST_WAITING_REPORT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._source = source
        self._describe = describe
        self._interval = interval
        self._longest = max(interval, longest_interval)
        self._delay = interval
        self._since = self._clock()  # the last data, or the start
        self._last_line = self._since

    def data_arrived(self) -> None:
        """Notes that data came: the next line is due ``interval`` s after the last data."""
        self._since = self._last_line = self._clock()
        self._delay = self._interval

    def poll(self) -> bool:
        """Logs the line when it is due; returns whether it did."""
        now = self._clock()
        if now - self._last_line < self._delay:
            return False
        self._last_line = now
        if now - self._since >= 2 * self._interval:  # the first two lines come at 1x and 2x
            self._delay = min(2 * self._delay, self._longest)
        logger.warning("waiting for data from %s: nothing usable for %.0f s; %s",
                       self._source, now - self._since, self._describe())
        return True
