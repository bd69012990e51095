# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the processing ranks' time goes: seconds spent in each stage of the event loop.

A processing rank times every event's stages (:data:`STAGES`) with ``time.perf_counter`` and
sends the sums gathered since its last message with each result; the collecting rank merges
them, so its speed reports can say, per event, how long the processing ranks waited for or read
the next event, retrieved its data (the Data Sources: e.g. the JUNGFRAU calibration), processed
it (e.g. peakfinder8 and the hit decision) and sent the result. These are wall-clock times of
the rank's main thread: a rank that waits for data shows it in ``next_event``.
"""

import math
from typing import Any

__all__ = ["STAGES", "StageTimes", "describe_per_event", "stage_times"]

#: The stages of a processing rank's event loop, in order.
STAGES = ("next_event", "data_retrieval", "processing", "sending")


class StageTimes:
    """Sums of seconds per stage and the number of events they cover (one thread only)."""

    def __init__(self) -> None:
        self._events = 0
        self._seconds = dict.fromkeys(STAGES, 0.0)
        self._unsent_events = 0
        self._unsent = dict.fromkeys(STAGES, 0.0)

    def add_event(self, seconds: dict[str, float]) -> None:
        """Counts one event that took ``seconds`` (stage -> s) in the stages given.

        Raises:
            KeyError: for a stage not in :data:`STAGES` (a bug of the caller).
        """
        self._events += 1
        self._unsent_events += 1
        for stage, value in seconds.items():
            self._seconds[stage] += value
            self._unsent[stage] += value

    def take_unsent(self) -> dict[str, Any]:
        """Returns ``{"events": n, "seconds": {stage: s}}`` added since the last call (for the
        collecting rank) and starts a new sum."""
        sent = {"events": self._unsent_events, "seconds": self._unsent}
        self._unsent_events = 0
        self._unsent = dict.fromkeys(STAGES, 0.0)
        return sent

    def merge(self, sent: Any) -> None:
        """Adds what another rank's :meth:`take_unsent` returned.

        Raises:
            ValueError: when ``sent`` is not such a map (unknown stage, negative or non-finite
                number); nothing is added then.
        """
        try:
            events = int(sent["events"])
            seconds = {str(stage): float(value) for stage, value in sent["seconds"].items()}
        except (TypeError, KeyError, AttributeError, ValueError) as error:
            raise ValueError(f"stage times: malformed {type(sent).__name__}: {error}")
        unknown = set(seconds) - set(STAGES)
        if unknown:
            raise ValueError(f"stage times: unknown stage {min(unknown)!r}")
        if events < 0 or not all(math.isfinite(v) and v >= 0 for v in seconds.values()):
            raise ValueError("stage times: negative or non-finite value")
        self._events += events
        for stage, value in seconds.items():
            self._seconds[stage] += value

    def totals(self) -> tuple[int, dict[str, float]]:
        """(events, {stage: seconds}) merged so far."""
        return self._events, dict(self._seconds)


def describe_per_event(earlier: tuple[int, dict[str, float]],
                       later: tuple[int, dict[str, float]]) -> str:
    """One line of milliseconds per event in each stage between two :meth:`StageTimes.totals`,
    e.g. ``"next_event 0.12, data_retrieval 0.55, processing 1.05, sending 0.04 ms"``; empty
    when no event came in between."""
    events = later[0] - earlier[0]
    if events <= 0:
        return ""
    parts = [f"{stage} {1e3 * (later[1][stage] - earlier[1][stage]) / events:.2f}"
             for stage in STAGES]
    return ", ".join(parts) + " ms"


stage_times = StageTimes()
"""The process-wide stage times (processing ranks add, the collecting rank merges)."""
