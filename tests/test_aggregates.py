# SPDX-License-Identifier: GPL-3.0-or-later
"""Hit rate history, peakogram and virtual powder pattern of the collecting rank."""

import numpy as np

from om.lib.hit_rate import HitRateHistory
from om.lib.peakogram import Peakogram
from om.lib.virtual_powder import VirtualPowderPattern


def test_hit_rate_running_average_and_history():
    history = HitRateHistory(window_size=4, history_length=5)
    for index, is_hit in enumerate([True, False, True, True, False, False, False]):
        history.add(100.0 + index, is_hit)
    assert history.hit_rate == 25.0  # last 4: T F F F
    times, rates = history.history()
    np.testing.assert_array_equal(times, [102.0, 103.0, 104.0, 105.0, 106.0])
    np.testing.assert_allclose(rates, [2 / 3 * 100, 75.0, 50.0, 50.0, 25.0])
    history.reset()
    assert history.hit_rate == 0.0 and history.history()[0].size == 0


def test_peakogram_grows_its_intensity_axis():
    peakogram = Peakogram(radius_bin_size=2.0, intensity_bin_size=10.0, max_radius=100.0)
    peakogram.add(np.array([1.0, 51.0, 51.5]), np.array([5.0, 1000.0, 1005.0]))
    assert peakogram.histogram.shape[1] >= 101
    assert peakogram.histogram[0, 0] == 1 and peakogram.histogram[25, 100] == 2
    assert peakogram.histogram.sum() == 3


def test_virtual_powder_sums_repeated_pixels():
    powder = VirtualPowderPattern((4, 5))
    powder.add(np.array([1, 1, 3]), np.array([2, 2, 4]), np.array([1.0, 2.0, 5.0]))
    assert powder.image[1, 2] == 3.0 and powder.image[3, 4] == 5.0 and powder.image.sum() == 8.0


def test_peakogram_clamps_out_of_range_peaks_to_its_edges():
    peakogram = Peakogram(radius_bin_size=2.0, intensity_bin_size=10.0, max_radius=10.0,
                          max_intensity_bins=64)
    # Beyond the largest radius, negative values (a background-subtracted artefact), beyond the
    # largest intensity bin: each in the nearest edge bin, none lost.
    peakogram.add(np.array([500.0, -3.0, 4.0]), np.array([15.0, -20.0, 1e9]))
    histogram = peakogram.histogram
    assert histogram.shape == (6, 64)
    assert histogram[5, 1] == 1 and histogram[0, 0] == 1 and histogram[2, 63] == 1
    assert histogram.sum() == 3
    peakogram.add(np.array([4.0]), np.array([1e9]))  # after the axis grew: same histogram
    assert peakogram.histogram[2, 63] == 2
