# SPDX-License-Identifier: GPL-3.0-or-later
"""Saturation and the radial profile: the per-frame measures on known frames, and the whole
monitor (``mpiexec -n 3 om_monitor.py``) on the real JUNGFRAU frames with saturated pixels
injected by the simulator (``--saturated-pixels``)."""

import math
import pathlib

import numpy as np
import pytest

from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration
from om.lib.configuration_copy import write_configuration_copy
from om.lib.geometry import load_geometry
from om.lib.resolution import resolution_ring_radius
from om.processing_layer.radial_profile import RadialProfile
from om.processing_layer.saturation import SaturationCounter
from om.simulation.frame_sources import HDF5FrameSource, SaturatingFrameSource

from helpers import configure, free_port, run_monitor_with_sender, simulator_command

MODULE5_GEOMETRY = pathlib.Path(__file__).parent / "data" / "jungfrau_module5_1m.geom"
INJECTED = 10  # saturated pixels the simulator injects in every other frame


def test_a_ring_of_known_radius_and_height(geometry_1m):
    """A flat annulus of height 50 on a background of 1, on the real 1M geometry (panel gaps
    included): the profile is 51 in the bins inside the annulus, 1 elsewhere, and peaks there;
    invalid (NaN) and saturated (+inf) pixels do not count."""
    geometry = load_geometry(geometry_1m)
    radius = geometry.radius
    frame = np.ones(geometry.slab_shape, dtype=np.float32)
    frame[(radius >= 300) & (radius < 320)] += 50.0
    frame[::7, ::5] = np.nan
    frame[5::11, 3::13] = np.inf
    for row_step in (1, 4):
        profile = RadialProfile(radius_map=radius, bin_size=2.0, row_step=row_step,
                                good_pixels=geometry.bad_region_mask)
        values = profile.compute(frame)
        inside = (profile.bin_radius > 300) & (profile.bin_radius < 320)
        outside = ((profile.bin_radius < 298) | (profile.bin_radius > 322)) & np.isfinite(values)
        assert inside.sum() == 10
        np.testing.assert_allclose(values[inside], 51.0, rtol=1e-6)
        np.testing.assert_allclose(values[outside], 1.0, rtol=1e-6)
        assert 300 < profile.bin_radius[np.nanargmax(values)] < 320
        assert profile.ring_mean(300, 320) == pytest.approx(51.0)
        assert profile.ring_mean(100, 200) == pytest.approx(1.0)
        assert math.isnan(profile.ring_mean(5000, 6000))
    # A Bragg spot above max_value is left out; without max_value it lifts its bin.
    spotted = frame.copy()
    spotted[(radius >= 200) & (radius < 202)] = np.where(
        np.arange(np.count_nonzero((radius >= 200) & (radius < 202))) % 50 == 0, 1000.0, 1.0)
    capped = RadialProfile(radius_map=radius, bin_size=2.0, row_step=1, max_value=20.0)
    plain = RadialProfile(radius_map=radius, bin_size=2.0, row_step=1)
    assert capped.compute(spotted)[100] == pytest.approx(1.0)
    assert plain.compute(spotted)[100] > 10.0


def test_a_gaussian_ring_peaks_at_its_radius(geometry_1m):
    geometry = load_geometry(geometry_1m)
    frame = (2.0 + 30.0 * np.exp(-0.5 * ((geometry.radius - 407.0) / 6.0) ** 2)).astype(np.float32)
    profile = RadialProfile(radius_map=geometry.radius, bin_size=1.0, row_step=4)
    values = profile.compute(frame)
    assert profile.bin_radius[np.nanargmax(values)] == pytest.approx(407.5, abs=1.0)
    assert np.nanmax(values) == pytest.approx(32.0, rel=0.01)


def test_saturated_pixels_of_frames_and_peaks():
    panels = [(0, 99, 0, 49), (0, 99, 50, 99)]
    frame = np.zeros((100, 100), dtype=np.float32)
    frame[10, 10] = np.inf  # the JUNGFRAU mark
    frame[10, 12] = 7000.0  # above the configured limit
    frame[52, 50] = np.inf  # the other panel: not counted for a peak at row 48
    counter = SaturationCounter(panels=panels, shape=(100, 100), limit=5000.0, peak_radius=2)
    assert counter.count(frame) == 3
    in_peaks = counter.count_in_peaks(frame, np.array([10.4, 11.0, 50.0, 90.0, -3.0]),
                                      np.array([10.2, 12.0, 48.0, 90.0, 5.0]))
    assert in_peaks.tolist() == [2, 2, 0, 0, 0]
    only_marked = SaturationCounter(panels=panels, shape=(100, 100), limit=None, peak_radius=0)
    assert only_marked.count(frame) == 2
    assert only_marked.count_in_peaks(frame, np.array([10.0]), np.array([10.0])).tolist() == [1]


def _expected_saturation(real_module_file, tmp_path, frames):
    """(saturated pixels per frame index, frames with more than the alarm) as the calibration
    counts them, with and without the simulator's injection."""
    source = HDF5FrameSource(str(real_module_file))
    darks, gains = source.write_calibration(tmp_path / "expected")
    calibration = JungfrauCalibration.from_files(dark_filenames=darks, gain_filenames=gains,
                                                 photon_energy_kev=12.4)
    injected = SaturatingFrameSource(source, INJECTED, 2)
    counts = {}
    for index in range(frames):
        baseline = calibration.calibrate(source.frame(index))[1].saturated
        with_injection = calibration.calibrate(injected.frame(index))[1].saturated
        assert with_injection == baseline + (INJECTED if index % 2 == 0 else 0)
        counts[index] = with_injection
    return counts


@pytest.mark.slow
def test_monitor_on_real_frames_with_injected_saturation(tmp_path, real_module_file,
                                                         real_calibration):
    frames = 40
    config, broadcast = configure(tmp_path, MODULE5_GEOMETRY, *real_calibration,
                                  frame_queue_size=8, saturated_pixels_for_alarm=10,
                                  radial_profile_max_value=20.0)
    write_configuration_copy(config, config, {
        ("data_retrieval_layer", "fallback_detector_distance_in_mm"): 75.0})
    expected = _expected_saturation(real_module_file, tmp_path, frames)
    # The real frames hold 4 to 10 saturated pixels; the injected ones 10 more: every other
    # frame (the injected ones) has more than 10.
    assert sum(count > 10 for count in expected.values()) == frames // 2
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    data, shown, _ = run_monitor_with_sender(
        tmp_path, config, broadcast,
        simulator_command(urls, "--file", str(real_module_file), "--rate", "5", "--frames",
                          str(frames), "--saturated-pixels", str(INJECTED),
                          "--saturated-frame-interval", "2"),
        urls, frames)
    assert data["problems"].get("frame_dropped_ranks_busy", 0) == 0  # every frame counted
    # Saturation: the injected counts, per frame, and the peaks around them flagged.
    for frame in shown:
        index = int(frame["event_id"]) - 1
        assert frame["num_saturated_pixels"] == expected[index], frame["event_id"]
        flagged = int((frame["peak_list_saturated_pixels"] > 0).sum())
        print(f"frame {index}: {frame['num_saturated_pixels']} saturated pixels, "
              f"{flagged} of {frame['num_peaks']} peaks flagged")
        # Most injected pixels sit in a spot that stays a peak without its centre.
        assert flagged >= (INJECTED // 2 if index % 2 == 0 else 0)
    assert {int(f["event_id"]) % 2 for f in shown} == {0, 1}, "frames of both kinds"
    # The saturation rate history: half the frames have more than 10 saturated pixels.
    assert data["num_saturated_frames"] == frames // 2
    history = data["saturation_rate_history"]
    assert len(history) == len(data["hit_rate_timestamp_history"]) == frames
    assert history[-1] == pytest.approx(50.0)
    assert history[0] in (0.0, 100.0) and 40.0 <= history[9] <= 60.0
    assert data["saturation_rate"] == pytest.approx(50.0)
    print("saturation rate history:", np.round(history, 1).tolist())

    # The radial profile around the real beam: the solvent ring where it shows on the
    # assembled image (a broad band 300-400 px from the beam, docs/performance.md), inside the
    # watched ring of 3.0-3.7 A at 12.4 keV and 75 mm.
    radius = data["radial_profile_radius"]
    hits = data["radial_profile_hits"]
    assert data["radial_profile_num_hits"] == frames  # every real frame is a hit
    smooth = np.convolve(np.nan_to_num(hits), np.ones(20) / 20, mode="same")
    peak_radius = radius[10 + int(np.argmax(smooth[10:-10]))]
    print(f"smoothed profile maximum at {peak_radius:.0f} px")
    assert 250 <= peak_radius <= 420
    low, high = data["ring_radius"]
    assert low == pytest.approx(resolution_ring_radius(3.7, 12400, 75, 75e-6), rel=1e-6)
    assert high == pytest.approx(resolution_ring_radius(3.0, 12400, 75, 75e-6), rel=1e-6)
    inner = np.nanmean(hits[(radius > 150) & (radius < 200)])
    outer = np.nanmean(hits[(radius > 550) & (radius < 600)])
    ring = data["ring_intensity_history"]
    assert len(ring) == frames and np.all(ring > inner) and np.all(ring > outer)
    assert len(data["radial_profile_latest"]) == len(radius)


def test_a_profile_of_another_size_is_counted_not_fatal():
    from om.lib.problems import problems
    from om.processing_layer.sample_watch import SAMPLE_WATCH_PARAMETERS, WatchAggregates

    values = {p.name: p.default for p in SAMPLE_WATCH_PARAMETERS}
    values.update(running_average_window_size=10, hit_rate_history_length=10)
    aggregates = WatchAggregates(get=values.get)
    result = {"timestamp": 1.0, "frame_is_hit": True, "num_saturated_pixels": 3,
              "radial_profile": np.ones(5, dtype=np.float32), "ring_intensity": 2.0,
              "ring_radius": [1.0, 2.0]}
    aggregates.add(result)
    before = problems.counts().get("bad_rank_message", 0)
    aggregates.add(dict(result, radial_profile=np.ones(7, dtype=np.float32)))
    assert problems.counts().get("bad_rank_message", 0) == before + 1
    keys = aggregates.omdata_keys()
    assert keys["radial_profile_num_hits"] == 1 and keys["num_saturated_frames"] == 2
    assert len(keys["saturation_rate_history"]) == 2
