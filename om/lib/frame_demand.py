# SPDX-License-Identifier: GPL-3.0-or-later
"""Frames on demand: processing ranks send their calibrated frames only as often as someone
on the collecting rank's side looks at them.

A 1M frame is 4 MB (float32). Every frame a processing rank sends costs the collecting rank a
4 MB copy and memory bandwidth the processing ranks' kernels share; the GUIs redraw at most 10
frames a second and indexamajig's SUB mode takes at most ``crystfel_max_frames_per_second``.
Before, each processing rank sent every ``hit_frame_sending_interval``-th hit (OM's rule) even
with nobody subscribed: 55 frames a second (220 MB/s) in ``benchmarks/bench_files.py``, up to a
frame per hit at a JUNGFRAU's 2 kHz.

The collecting rank works out how many frames a second its consumers want
(:class:`FrameDemand`) and tells the processing ranks whenever that changes, through the
parallelization layer's feedback (``collect_data``'s return value, OM's mechanism). Each
processing rank then lets a frame that is due by OM's interval rule go only when its share of
that rate allows it (:class:`FrameSendingGate`). Until the first feedback arrives a processing
rank sends every due frame, as before.
"""

import math
import time
from collections.abc import Callable
from typing import Any

from om.lib.problems import problems

FEEDBACK_KEY = "frames_wanted_per_second"
# The collecting rank looks at its subscribers at most this often (s): each look reads the
# broadcast socket's subscription messages.
_CHECK_PERIOD = 0.1


class FrameSendingGate:
    """A processing rank's limit on the frames it sends.

    Args:
        processing_ranks: the number of processing ranks, which share the wanted rate equally.
    """

    def __init__(self, processing_ranks: int) -> None:
        self._processing_ranks = max(1, processing_ranks)
        self._period: float | None = 0.0  # s between two frames; None: no frames at all
        self._last_sent = -math.inf

    def update(self, data: dict[str, Any]) -> None:
        """Takes the wanted rate (frames/s for all processing ranks together, ``inf``: every
        due frame, 0: none) from an event's data, if the collecting rank's feedback put it
        there. A value that is not a number ≥ 0 is counted as ``bad_rank_message`` and ignored.
        """
        if FEEDBACK_KEY not in data:
            return
        rate = data[FEEDBACK_KEY]
        if (not isinstance(rate, (int, float)) or isinstance(rate, bool) or math.isnan(rate)
                or rate < 0):
            problems.report("bad_rank_message",
                            f"feedback {FEEDBACK_KEY}: not a number >= 0: {rate!r}")
            return
        self._period = None if rate == 0 else self._processing_ranks / rate

    def allows(self, now: float | None = None) -> bool:
        """Whether a due frame may go now (``time.monotonic()`` s); if so, counts it as sent."""
        if self._period is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_sent < self._period:
            return False
        self._last_sent = now
        return True


class FrameDemand:
    """The collecting rank's side: tells the processing ranks when the wanted rate changes.

    Args:
        collecting_rank: this rank's number; as a feedback key it means every processing rank
            (OM's rule, where the collecting rank is rank 0).
    """

    def __init__(self, collecting_rank: int) -> None:
        self._collecting_rank = collecting_rank
        self._told = math.inf  # what the processing ranks do before any feedback
        self._last_check = -math.inf

    def feedback(self, wanted_per_second: Callable[[], float],
                 now: float | None = None) -> dict[int, dict[str, float]] | None:
        """The feedback for ``collect_data`` to return, or None.

        Args:
            wanted_per_second: gives the frames per second the consumers want now (``inf``:
                every due frame); called at most every 0.1 s.
            now: ``time.monotonic()`` s.

        Returns:
            ``{collecting_rank: {"frames_wanted_per_second": rate}}`` when the rate differs
            from the one last told, else None.
        """
        now = time.monotonic() if now is None else now
        if now - self._last_check < _CHECK_PERIOD:
            return None
        self._last_check = now
        rate = float(wanted_per_second())
        if rate == self._told:
            return None
        self._told = rate
        return {self._collecting_rank: {FEEDBACK_KEY: rate}}
