# SPDX-License-Identifier: GPL-3.0-or-later
"""Saturation: how many pixels of a frame saturated, and how many of them sit in each peak.

A pixel is saturated when its value is ``+inf`` (the Data Source's mark: the JUNGFRAU
calibration writes it for a G1 or G2 pixel with ADC 0, the detector's saturation flag) or at
or above a configured limit in frame units (``saturation_limit``: the ADU or photon count at
which a streamed detector saturates, e.g. the ``saturation_value`` its start message gives).
peakfinder8 never uses non-finite pixels, so a saturated core leaves a peak made of the pixels
around it: a peak's saturated pixels are counted in a box of ``peak_radius`` pixels around its
position, within its panel.

Cost (``benchmarks/bench_kernel.py``, docs/performance.md): a box per peak (0.06 ms per 1M
frame); the pass over the frame (0.16 ms) only when the Data Source did not count the saturated
pixels (JUNGFRAU's calibration does) or a ``saturation_limit`` is configured.
"""

import math
from typing import Sequence

import numba
import numpy as np

from om.lib.exceptions import OmConfigurationError

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**_JIT)
def _count_at_or_above(flat, limit):  # pragma: no cover - compiled
    count = 0
    for i in range(flat.shape[0]):
        count += flat[i] >= limit
    return count


@numba.njit(**_JIT)
def _count_in_boxes(frame, limit, fs, ss, radius, panel_rects, out):  # pragma: no cover
    # Per peak: pixels >= limit in the box of half width radius around its nearest pixel,
    # clipped to the peak's panel (found among the few rectangles: a per-pixel panel map would
    # be 4 MB of cold memory to read).
    for p in range(fs.shape[0]):
        col = int(math.floor(fs[p] + 0.5))
        row = int(math.floor(ss[p] + 0.5))
        count = 0
        for k in range(panel_rects.shape[0]):
            rect = panel_rects[k]
            if rect[0] <= col <= rect[1] and rect[2] <= row <= rect[3]:
                for r in range(max(row - radius, rect[2]), min(row + radius, rect[3]) + 1):
                    for c in range(max(col - radius, rect[0]), min(col + radius, rect[1]) + 1):
                        count += frame[r, c] >= limit
                break
        out[p] = count


class SaturationCounter:
    """Counts the saturated pixels of frames and of their peaks.

    Args:
        panels: the panels as ``(min_fs, max_fs, min_ss, max_ss)`` inclusive rectangles of the
            slab (``DetectorGeometry.panel_rectangles``).
        shape: ``(ss, fs)`` of the frames.
        limit: pixels at or above this value (frame units) count as saturated, besides
            ``+inf``; None: only ``+inf``.
        peak_radius: half width, pixels, of the box around a peak where its saturated pixels
            are counted (>= 0).

    Raises:
        OmConfigurationError: when ``limit`` is NaN or ``peak_radius`` is negative.
    """

    def __init__(self, *, panels: Sequence[Sequence[int]], shape: tuple[int, int],
                 limit: float | None, peak_radius: int) -> None:
        if limit is not None and math.isnan(limit):
            raise OmConfigurationError("saturation limit is NaN")
        if peak_radius < 0:
            raise OmConfigurationError(f"saturation peak radius {peak_radius} is negative")
        self._limit = np.float32(np.inf if limit is None else limit)
        #: Whether a limit besides +inf was configured.
        self.has_limit = limit is not None
        self._peak_radius = int(peak_radius)
        self._rects = np.asarray(panels, dtype=np.int64).reshape(-1, 4)
        self.count(np.zeros(shape, dtype=np.float32))  # compile now, not on the first frame
        self.count_in_peaks(np.zeros(shape, dtype=np.float32), np.zeros(1), np.zeros(1))

    def count(self, frame: np.ndarray) -> int:
        """The number of saturated pixels of a float32 (ss, fs) frame."""
        flat = np.ascontiguousarray(frame, dtype=np.float32).reshape(-1)
        return int(_count_at_or_above(flat, self._limit))

    def count_in_peaks(self, frame: np.ndarray, fs: np.ndarray, ss: np.ndarray) -> np.ndarray:
        """int32 (n,): the saturated pixels around each peak (``fs``, ``ss``: float64 (n,)
        positions, pixel index units); 0 for a position outside every panel."""
        out = np.zeros(len(fs), dtype=np.int32)
        _count_in_boxes(np.ascontiguousarray(frame, dtype=np.float32), self._limit,
                        np.asarray(fs, dtype=np.float64), np.asarray(ss, dtype=np.float64),
                        self._peak_radius, self._rects, out)
        return out
