# SPDX-License-Identifier: GPL-3.0-or-later
"""Accumulating JUNGFRAU dark frames: per-pixel pedestal and noise of each gain stage.

A dark frame is read without X-rays; a pixel word is ``(code << 14) | ADC`` with the gain code
``0b00`` (G0), ``0b01`` (G1) or ``0b11`` (G2). Every valid pixel reading is added to the
statistics of the stage its own code names, so a pixel that reports another stage than the
rest of the frame is counted where it belongs, and a pixel that never reports a stage ends with
a count of 0 there. Missing pixels (``0xFFFF``) and the invalid code ``0b10`` are not used.

The sums are exact: the counts, the sums of the ADC values and the sums of their squares are
integers (int64 holds 16383**2 * 3e10 readings), so thousands of frames lose no precision and
the variance has no rounding of large squared means; they become float64 only when the mean and
the variance are computed.
"""

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

MODULE_SHAPE: tuple[int, int] = (512, 1024)
"""Shape (ss, fs) of one JUNGFRAU module, in pixels."""

STAGE_NAMES: tuple[str, str, str] = ("G0", "G1", "G2")
STAGE_CODES: tuple[int, int, int] = (0b00, 0b01, 0b11)
"""Gain code (bits 15-14 of the word) of G0, G1, G2."""

ADC_MAX = 0x3FFF
_MISSING = 0xFFFF


class DarkStatistics(NamedTuple):
    """Pedestals and noise of every pixel and gain stage.

    Attributes:
        pedestal: float64 (n_modules, 3, 512, 1024) mean ADC value per pixel of G0, G1, G2, ADC
            units (gain bits not included); NaN where the pixel never reported the stage.
        rms: float64 (n_modules, 3, 512, 1024) standard deviation of the ADC value (ADU,
            ``ddof=1``); NaN with fewer than 2 readings.
        count: int64 (n_modules, 3, 512, 1024) readings of each pixel in each stage.
        frames: frames added, per stage in which most of the frame's pixels were (G0, G1, G2).
    """

    pedestal: NDArray[np.float64]
    rms: NDArray[np.float64]
    count: NDArray[np.int64]
    frames: tuple[int, int, int]


class DarkAccumulator:
    """Running per-pixel sums of dark frames, per gain stage.

    Args:
        n_modules: number of 512 x 1024 modules of a frame (stacked along ss, module 0 first).

    Raises:
        ValueError: when ``n_modules`` is below 1.

    Attributes:
        frames: frames added so far, per majority stage (G0, G1, G2).
        skipped_pixels: readings not used (missing ``0xFFFF`` or invalid code ``0b10``).

    Memory: 20 bytes per pixel and stage (60 MB for a JUNGFRAU 1M).
    """

    def __init__(self, n_modules: int) -> None:
        if int(n_modules) < 1:
            raise ValueError(f"n_modules must be at least 1, not {n_modules}")
        self.n_modules = int(n_modules)
        self.frame_shape: tuple[int, int] = (self.n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1])
        n_pixels = self.frame_shape[0] * self.frame_shape[1]
        self._count = np.zeros((3, n_pixels), dtype=np.uint32)
        self._sum = np.zeros((3, n_pixels), dtype=np.int64)
        self._sum_squares = np.zeros((3, n_pixels), dtype=np.int64)
        self._frames = [0, 0, 0]
        self.skipped_pixels = 0
        # Scratch arrays reused by every frame (no allocation per frame).
        self._adc = np.empty(n_pixels, dtype=np.uint32)
        self._square = np.empty(n_pixels, dtype=np.uint32)
        self._code = np.empty(n_pixels, dtype=np.uint16)
        self._mask = np.empty(n_pixels, dtype=bool)

    @property
    def frames(self) -> tuple[int, int, int]:
        """Frames added so far, per majority stage (G0, G1, G2)."""
        return (self._frames[0], self._frames[1], self._frames[2])

    def majority_stage(self, frame: NDArray[np.uint16]) -> int | None:
        """Returns the stage (0, 1, 2 for G0, G1, G2) most valid pixels of ``frame`` are in.

        Args:
            frame: uint16 (n_modules * 512, 1024) raw words.

        Returns:
            The stage index, or None when no pixel is valid.

        Raises:
            ValueError: on a frame of the wrong dtype or shape.
        """
        words = self._check(frame)
        counts = np.bincount(words >> 14, minlength=4)
        counts[0b11] -= np.count_nonzero(words == _MISSING)
        per_stage = [int(counts[code]) for code in STAGE_CODES]
        if max(per_stage) == 0:
            return None
        return int(np.argmax(per_stage))

    def add(self, frame: NDArray[np.uint16], stage: int | None = None) -> int | None:
        """Adds one dark frame.

        Args:
            frame: uint16 (n_modules * 512, 1024) raw words (any layout; read-only is fine).
            stage: the frame's stage for the frame counts (0, 1, 2), if already known from
                :meth:`majority_stage`; computed otherwise.

        Returns:
            The stage the frame was counted in, or None when it holds no valid pixel (then it
            is not added).

        Raises:
            ValueError: on a frame of the wrong dtype or shape.
        """
        words = self._check(frame)
        if stage is None:
            stage = self.majority_stage(frame)
            if stage is None:
                self.skipped_pixels += words.size
                return None
        np.right_shift(words, 14, out=self._code)
        np.bitwise_and(words, ADC_MAX, out=self._adc)
        np.multiply(self._adc, self._adc, out=self._square)
        used = 0
        for index, code in enumerate(STAGE_CODES):
            np.equal(self._code, code, out=self._mask)
            if code == 0b11:
                self._mask &= words != _MISSING
            n = int(np.count_nonzero(self._mask))
            if n == 0:
                continue
            used += n
            if n == words.size:  # a clean dark frame: every pixel in the same stage
                self._count[index] += 1
                self._sum[index] += self._adc
                self._sum_squares[index] += self._square
            else:
                self._count[index] += self._mask
                np.add(self._sum[index], self._adc, out=self._sum[index], where=self._mask)
                np.add(self._sum_squares[index], self._square, out=self._sum_squares[index],
                       where=self._mask)
        self.skipped_pixels += words.size - used
        self._frames[stage] += 1
        return stage

    def statistics(self) -> DarkStatistics:
        """Returns the pedestals, noise and counts so far (see :class:`DarkStatistics`)."""
        shape = (3, self.n_modules, *MODULE_SHAPE)
        count = self._count.astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = self._sum / count
            # sum(x^2) - sum(x) * mean: the integer sums are exact (float64 holds them exactly
            # up to 9e15, i.e. 3e7 readings of full-scale ADC), so only the product is rounded.
            spread = self._sum_squares - self._sum * mean
            variance = np.maximum(spread, 0.0) / (count - 1.0)
        mean[count == 0] = np.nan
        variance[count < 2] = np.nan

        def to_modules(array: np.ndarray) -> np.ndarray:
            # (3, n_modules * 512 * 1024) -> (n_modules, 3, 512, 1024)
            return np.ascontiguousarray(array.reshape(shape).transpose(1, 0, 2, 3))

        return DarkStatistics(pedestal=to_modules(mean), rms=to_modules(np.sqrt(variance)),
                              count=to_modules(count), frames=self.frames)

    def _check(self, frame: NDArray[np.uint16]) -> NDArray[np.uint16]:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint16 or (
                frame.shape != self.frame_shape):
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(
                frame).__name__
            raise ValueError(f"a dark frame must be uint16 {self.frame_shape}, got {got}")
        return frame.reshape(-1)
