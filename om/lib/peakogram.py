# SPDX-License-Identifier: GPL-3.0-or-later
"""The peakogram: a 2-D histogram of peak radius against peak intensity.

As in OM, the intensity is the peak's maximum pixel value, which shows saturation and
detector artefacts (radius-independent streaks) at a glance.
"""

import numpy as np


def _bins(values: np.ndarray, bin_size: float, num_bins: int) -> np.ndarray:
    """int64 (n,): the bin of each value, clamped to 0..num_bins - 1 (ufuncs in place: np.clip
    costs twice as much, for every peak of every event)."""
    bins = (values / bin_size).astype(np.int64)
    np.maximum(bins, 0, out=bins)
    return np.minimum(bins, num_bins - 1, out=bins)


class Peakogram:
    """Histogram of (radius, max pixel intensity) of every peak; the intensity axis grows.

    Args:
        radius_bin_size: width of a radius bin, pixels.
        intensity_bin_size: width of an intensity bin, in the frame's units (photons).
        max_radius: the largest radius of the detector, pixels.
        max_intensity_bins: the intensity axis never grows beyond this (larger values land in
            the last bin).
    """

    def __init__(self, *, radius_bin_size: float, intensity_bin_size: float, max_radius: float,
                 max_intensity_bins: int = 4096) -> None:
        self.radius_bin_size = float(radius_bin_size)
        self.intensity_bin_size = float(intensity_bin_size)
        self._n_radius = int(np.ceil(max_radius / radius_bin_size)) + 1
        self._max_intensity_bins = max_intensity_bins
        self.reset()

    def reset(self) -> None:
        """Clears the histogram."""
        self.histogram = np.zeros((self._n_radius, 16), dtype=np.float32)

    def add(self, radius: np.ndarray, intensity: np.ndarray) -> None:
        """Adds peaks: radius (n,) in pixels and max pixel intensity (n,)."""
        if radius.size == 0:
            return
        radius_bins = _bins(radius, self.radius_bin_size, self._n_radius)
        intensity_bins = _bins(intensity, self.intensity_bin_size, self._max_intensity_bins)
        needed = int(intensity_bins.max()) + 1
        if needed > self.histogram.shape[1]:
            grown = min(self._max_intensity_bins, max(needed, 2 * self.histogram.shape[1]))
            self.histogram = np.pad(self.histogram, ((0, 0), (0, grown - self.histogram.shape[1])))
        # A float32 one: with a Python int, add.at takes a slow casting loop (4x slower); one
        # flat index: the fast path of add.at (a tuple of index arrays takes the general one).
        np.add.at(self.histogram.reshape(-1),
                  radius_bins * self.histogram.shape[1] + intensity_bins, np.float32(1))
