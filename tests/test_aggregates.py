# SPDX-License-Identifier: GPL-3.0-or-later
"""Hit rate history, peakogram and virtual powder pattern of the collecting rank."""

import numpy as np

from om.lib.hit_rate import HitRateHistory
from om.lib.parameters import MonitorParameters
from om.lib.peakogram import Peakogram
from om.lib.virtual_powder import VirtualPowderPattern
from om.simulation.configuration import write_monitor_configuration


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
    powder.add(np.array([1 * 5 + 2, 1 * 5 + 2, 3 * 5 + 4]), np.array([1.0, 2.0, 5.0]))
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


def test_the_collecting_rank_adds_each_peak_at_its_assembled_pixel(tmp_path, geometry_1m):
    # The real 1M geometry (every slab pixel on a panel); peaks at fractional slab positions,
    # two nearest to the same pixel, one left of the slab.
    from om.lib.geometry import load_geometry
    from om.processing_layer.crystallography import CrystallographyProcessing

    config = write_monitor_configuration(tmp_path / "monitor.yaml", {"crystallography": {
        "geometry_file": str(geometry_1m), "data_broadcast_url": "tcp://127.0.0.1:*",
        "responding_url": None}})
    parameters = MonitorParameters(config)
    parameters.validate(CrystallographyProcessing.parameter_groups, complete=False)
    collecting = CrystallographyProcessing(parameters=parameters)
    collecting.initialize_collecting_node(node_rank=0, node_pool_size=2)
    geometry = load_geometry(geometry_1m)
    fs = np.array([10.4, 10.2, 700.6, -0.7])
    ss = np.array([20.3, 19.8, 900.49, 3.0])
    result = {"timestamp": 1.0, "event_id": "e", "beam_energy": 12400.0,
              "detector_distance": 100.0, "frame_is_hit": True, "num_peaks": 4,
              "peak_fs": fs, "peak_ss": ss, "peak_intensity": np.array([1.0, 2.0, 4.0, 8.0]),
              "peak_max_pixel_intensity": np.array([5.0, 5.0, 5.0, 5.0]),
              "peak_radius": np.array([100.0, 100.0, 300.0, 400.0])}
    try:
        collecting.collect_data(node_rank=0, node_pool_size=2, processed_data=(result, 1))
        powder = collecting._powder.image
        first = geometry.assembled_row[20, 10], geometry.assembled_col[20, 10]
        second = geometry.assembled_row[900, 701], geometry.assembled_col[900, 701]
        assert powder[first] == 3.0  # two peaks nearest to slab pixel (ss 20, fs 10)
        assert powder[second] == 4.0
        # -0.7 rounds to fs -1, clamped to the slab's first column, which is on a panel.
        third = geometry.assembled_row[3, 0], geometry.assembled_col[3, 0]
        assert powder[third] == 8.0
        assert powder.sum() == 15.0
    finally:
        collecting._broadcaster.close(0)
