# SPDX-License-Identifier: GPL-3.0-or-later
"""Radial profiles averaged on the collecting rank, separately for hits and non-hits."""

import numpy as np


class ProfileAverages:
    """The mean radial profile of the hits and of the non-hits since the start (or the last
    reset), and the latest profile.

    Args:
        num_bins: the number of radius bins of every profile.
    """

    def __init__(self, *, num_bins: int) -> None:
        self._sums = np.zeros((2, num_bins), dtype=np.float64)  # row 0 non-hits, row 1 hits
        self._counts = np.zeros((2, num_bins), dtype=np.int64)
        self.latest = np.full(num_bins, np.nan, dtype=np.float32)
        self.num_profiles = [0, 0]

    def reset(self) -> None:
        """Forgets every profile."""
        self._sums[:] = 0.0
        self._counts[:] = 0
        self.latest[:] = np.nan
        self.num_profiles = [0, 0]

    def add(self, profile: np.ndarray, is_hit: bool) -> None:
        """Adds one frame's profile (float32 (num_bins,), NaN for an empty bin).

        Raises:
            ValueError: when the profile has another number of bins.
        """
        profile = np.asarray(profile, dtype=np.float32)
        if profile.shape != self.latest.shape:
            raise ValueError(f"radial profile of {profile.shape} bins, expected "
                             f"{self.latest.shape}")
        finite = np.isfinite(profile)
        row = int(is_hit)
        self._sums[row][finite] += profile[finite]
        self._counts[row][finite] += 1
        self.num_profiles[row] += 1
        self.latest[:] = profile

    def mean(self, hits: bool) -> np.ndarray:
        """float32 (num_bins,): the mean profile of the hits (or non-hits); NaN where none."""
        row = int(hits)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self._sums[row] / self._counts[row]).astype(np.float32)
