# SPDX-License-Identifier: GPL-3.0-or-later
"""Counting and rate-limited logging of bad input and dropped data.

Bad input never crashes a rank and never goes unnoticed: every problem is counted under a
short kind (``"incomplete_frame"``, ``"bad_header"``, ...) and logged as one line, at most once
per kind every ``log_interval`` seconds, with the number suppressed since the last line.
Processing ranks send their counts to the collecting rank, which merges them into its own.
Counts saturate at :data:`om.lib.input_limits.MAX_COUNT` (counts derived from a peer's numbers,
such as frame-number gaps, can be anything): every count always packs into msgpack.
"""

import logging
import threading
import time

from om.lib.input_limits import saturating_add

logger = logging.getLogger("om")


class ProblemCounter:
    """Thread-safe counts of problems by kind, with rate-limited logging.

    Args:
        log_interval: the minimum time between two log lines of one kind, in seconds.
    """

    def __init__(self, log_interval: float = 5.0) -> None:
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}  # each at most MAX_COUNT
        self._unsent: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._renamed: dict[str, str] = {}

    def rename_from_now(self, renames: dict[str, str]) -> None:
        """Counts problems of the kinds in ``renames`` under the new kind from now on, reported
        here or merged: e.g. frames dropped while the monitor stops are an effect of the stop,
        not of busy ranks."""
        with self._lock:
            self._renamed.update(renames)

    def report(self, kind: str, message: str, *, count: int = 1) -> None:
        """Counts ``count`` problems of ``kind`` (saturating) and logs ``message`` unless logged
        recently."""
        now = time.monotonic()
        with self._lock:
            kind = self._renamed.get(kind, kind)
            self._counts[kind] = saturating_add(self._counts.get(kind, 0), count)
            self._unsent[kind] = saturating_add(self._unsent.get(kind, 0), count)
            last = self._last_logged.get(kind)
            if last is not None and now - last < self._log_interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            suppressed = self._suppressed.pop(kind, 0)
            self._last_logged[kind] = now
        suffix = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("%s: %s%s", kind, message, suffix)

    def merge(self, counts: dict[str, int]) -> None:
        """Adds counts received from another rank (not logged again, not sent again).

        Counts saturate; an entry that is not a text kind with an integer count is skipped (it
        came over a socket) and counted as ``bad_problem_count``.
        """
        bad = 0
        with self._lock:
            for kind, count in counts.items():
                if (not isinstance(kind, str) or not isinstance(count, int)
                        or isinstance(count, bool)):
                    bad += 1
                    continue
                kind = self._renamed.get(kind, kind)
                self._counts[kind] = saturating_add(self._counts.get(kind, 0), count)
        if bad:
            self.report("bad_problem_count", f"{bad} problem counts received were not "
                                             "integers under a text kind (skipped)", count=bad)

    def counts(self) -> dict[str, int]:
        """Returns a copy of all counts so far."""
        with self._lock:
            return dict(self._counts)

    def take_unsent(self) -> dict[str, int]:
        """Returns the counts added since the last call (to send them to the collecting rank)."""
        with self._lock:
            unsent, self._unsent = self._unsent, {}
        return unsent


def log_format(rank: int) -> str:
    """The ``logging`` format of the monitor's lines on stderr: ``om[RANK] LEVEL: message``."""
    return f"om[{rank}] %(levelname)s: %(message)s"


problems = ProblemCounter()
"""The process-wide counter every layer reports to."""
