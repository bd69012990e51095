# SPDX-License-Identifier: GPL-3.0-or-later
"""peakfinder8: the numba implementation against the reference rules, on real and synthetic
frames (agreement with OM itself: test_peakfinder8_agreement.py)."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from om.lib.exceptions import OmConfigurationError, OmInvalidDataError
from om.lib.geometry import load_geometry
from om.processing_layer.peakfinder8 import DEFAULT_PARAMETERS, PeakList, Peakfinder8PeakDetection
from peakfinder8_reference import find_peaks_reference

INVALID = 32678  # marks invalid pixels in the reference conversion
DOUBLE_PIXEL_COLUMNS = (255, 256, 511, 512, 767, 768)
DOUBLE_PIXEL_ROWS = (255, 256)


def calibrated_1m_frames(real_module) -> np.ndarray:
    """The real module's frames as the monitor's JUNGFRAU 1M frames: photons, invalid pixels
    NaN, double-size pixels divided by 2 (edges) or 4 (corners), the module stacked twice."""
    frames = real_module["converted_reference"].astype(np.float32)
    frames[frames == INVALID] = np.nan
    divisor = np.ones(frames.shape[1:], dtype=np.float32)
    divisor[:, list(DOUBLE_PIXEL_COLUMNS)] *= 2
    divisor[list(DOUBLE_PIXEL_ROWS), :] *= 2
    frames /= divisor
    return np.concatenate([frames, frames], axis=1)


@pytest.fixture(scope="module")
def frames_1m(real_module):
    return calibrated_1m_frames(real_module)


@pytest.fixture(scope="module")
def geometry(geometry_1m):
    return load_geometry(geometry_1m)


def assert_same_peaks(fast: PeakList, reference: PeakList) -> None:
    """The same peaks in the same order: sizes exactly, values to float64 rounding."""
    assert len(fast) == len(reference)
    np.testing.assert_array_equal(fast.num_pixels, reference.num_pixels)
    for name in ("fs", "ss", "intensity", "max_pixel_intensity", "snr", "radius"):
        np.testing.assert_allclose(getattr(fast, name), getattr(reference, name), rtol=1e-9,
                                   atol=1e-9, err_msg=name)


# Real frames --------------------------------------------------------------------------------

def test_matches_reference_on_the_real_frames(frames_1m, geometry):
    finder = Peakfinder8PeakDetection(radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **DEFAULT_PARAMETERS)
    for frame in frames_1m[::3]:
        assert_same_peaks(finder.find_peaks(frame), find_peaks_reference(
            frame, radius_map=geometry.peakfinder8_radius, panels=geometry.panel_rectangles,
            **DEFAULT_PARAMETERS))


def test_frame_order_does_not_change_the_peaks(frames_1m, geometry):
    # The fast path keeps ranges from the previous frame (speed only): after any frame, a
    # frame gives the same peaks as in a fresh finder.
    kwargs = dict(radius_map=geometry.peakfinder8_radius, panels=geometry.panel_rectangles,
                  **DEFAULT_PARAMETERS)
    fresh = [Peakfinder8PeakDetection(**kwargs).find_peaks(frame) for frame in frames_1m[:4]]
    reused = Peakfinder8PeakDetection(**kwargs)
    for before in (np.zeros_like(frames_1m[0]), 10 * frames_1m[5], frames_1m[6] - 3.0):
        reused.find_peaks(before)
        for frame, expected in zip(frames_1m[:4], fresh):
            assert_same_peaks(reused.find_peaks(frame), expected)


def test_default_parameters_find_the_bragg_spots(frames_1m, geometry):
    finder = Peakfinder8PeakDetection(radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **DEFAULT_PARAMETERS)
    for frame in frames_1m:
        peaks = finder.find_peaks(frame)
        assert peaks.fs.dtype == np.float64 and len(peaks) == peaks.fs.size
        # Both modules hold the same data: each has its hundred-odd spots, and about the same.
        upper = int(np.sum(peaks.ss < 512))
        lower = len(peaks) - upper
        assert 120 <= upper <= 400 and 120 <= lower <= 400
        assert abs(upper - lower) <= 0.2 * max(upper, lower)
        # No stripes along the (divided) double-size pixels: peaks on ASIC edge pixels are a
        # few per cent at most (spots cut by the edge).
        fs = np.round(peaks.fs).astype(int) % 256
        ss = np.round(peaks.ss).astype(int) % 256
        on_edge = np.isin(fs, (0, 255)) | np.isin(ss, (0, 255))
        assert on_edge.mean() < 0.06
        assert np.all(peaks.snr >= DEFAULT_PARAMETERS["minimum_snr"])
        assert np.all(peaks.num_pixels >= 2)


# Synthetic frames ---------------------------------------------------------------------------

SHAPE = (96, 160)
PANELS = [(0, 79, 0, 95), (80, 159, 0, 95)]  # two panels side by side, edge at fs 79/80
SYNTHETIC = dict(adc_threshold=5.0, minimum_snr=5.0, min_pixel_count=2, max_pixel_count=50,
                 local_bg_radius=4, min_res=0.0, max_res=1000.0, max_num_peaks=100)


def _radius_map():
    ss, fs = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    return np.hypot(fs - 70.3, ss + 40.0)  # beam above the slab


def _frame(spots, seed=0, background=1.0, sigma=1.0):
    """Poisson background plus Gaussian spots (fs, ss, total photons) with exact pixel sums."""
    rng = np.random.default_rng(seed)
    expected = np.full(SHAPE, background)
    ss, fs = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    for x, y, total in spots:
        spot = np.exp(-((fs - x) ** 2 + (ss - y) ** 2) / (2 * sigma**2))
        expected += total * spot / spot.sum()
    return rng.poisson(expected).astype(np.float32)


def _finder(**overrides):
    return Peakfinder8PeakDetection(radius_map=_radius_map(), panels=PANELS,
                                    **dict(SYNTHETIC, **overrides))


def _reference(frame, **overrides):
    return find_peaks_reference(frame, radius_map=_radius_map(), panels=PANELS,
                                return_labels=True, **dict(SYNTHETIC, **overrides))


def _spots(seed, n=20):
    rng = np.random.default_rng(seed)
    spots = []
    while len(spots) < n:
        x, y = rng.uniform(6, 74), rng.uniform(6, 90)
        x += 80 * rng.integers(0, 2)
        if all(np.hypot(x - a, y - b) > 10 for a, b, _ in spots):
            spots.append((x, y, rng.uniform(300, 1500)))
    return spots


@pytest.mark.parametrize("seed", range(5))
def test_gaussian_spots_are_recovered(seed):
    spots = _spots(seed)
    frame = _frame(spots, seed=seed)
    peaks = _finder().find_peaks(frame)
    assert len(peaks) == len(spots)
    # Pixel index convention: the centre of pixel i is at i, as the spot positions here.
    distance, _ = cKDTree(np.c_[peaks.fs, peaks.ss]).query([(x, y) for x, y, _ in spots])
    assert np.all(distance < 0.5)
    reference, _ = _reference(frame)
    assert_same_peaks(peaks, reference)


def test_nan_pixels_are_never_part_of_a_peak():
    spots = _spots(7)
    frame = _frame(spots, seed=7)
    # NaN on the brightest pixel of every spot, and a NaN column through some of them.
    for x, y, _ in spots:
        frame[int(round(y)), int(round(x))] = np.nan
    frame[:, 40] = np.nan
    nan_mask = np.isnan(frame)
    peaks = _finder().find_peaks(frame)
    reference, pixels = _reference(frame)
    assert len(peaks) > 0
    assert_same_peaks(peaks, reference)
    for ss, fs in pixels:
        assert not nan_mask[ss, fs].any()
    assert np.all(np.isfinite(peaks.max_pixel_intensity)) and np.all(np.isfinite(peaks.intensity))
    # A spot made only of NaN pixels gives nothing; neither do infinite values.
    frame = _frame([(30.0, 40.0, 1000.0)], seed=1)
    frame[36:45, 26:35] = np.nan
    assert len(_finder().find_peaks(frame)) == 0
    frame[36:45, 26:35] = np.inf
    frame[10:13, 10:13] = -np.inf
    assert len(_finder().find_peaks(frame)) == 0


def test_bad_pixel_map_pixels_are_never_part_of_a_peak():
    spots = _spots(11)
    frame = _frame(spots, seed=11)
    bad_pixel_map = np.ones(SHAPE, dtype=np.uint8)
    x, y, _ = spots[0]
    bad_pixel_map[int(y) - 4:int(y) + 5, int(x) - 4:int(x) + 5] = 0  # hides the first spot
    for x, y, _ in spots[1:]:
        bad_pixel_map[int(round(y)), int(round(x))] = 0  # and the brightest pixel of the others
    peaks = _finder(bad_pixel_map=bad_pixel_map).find_peaks(frame)
    reference, pixels = _reference(frame, bad_pixel_map=bad_pixel_map)
    assert len(peaks) == len(spots) - 1
    assert_same_peaks(peaks, reference)
    for ss, fs in pixels:
        assert bad_pixel_map[ss, fs].all()
    hidden_x, hidden_y, _ = spots[0]
    assert np.all(np.hypot(peaks.fs - hidden_x, peaks.ss - hidden_y) > 4)


def test_no_peak_crosses_a_panel_edge():
    # A spot centred on the edge between the panels (pixels 79 | 80) is cut in two.
    frame = _frame([(79.5, 50.0, 2000.0), (30.0, 20.0, 1000.0)], seed=3)
    peaks = _finder().find_peaks(frame)
    reference, pixels = _reference(frame)
    assert len(peaks) == 3
    assert_same_peaks(peaks, reference)
    on_edge = np.abs(peaks.ss - 50.0) < 1.0
    assert on_edge.sum() == 2
    left, right = sorted(peaks.fs[on_edge])
    assert 75.0 < left <= 79.0 and 80.0 <= right < 84.0
    for ss, fs in pixels:
        assert np.all(fs <= 79) or np.all(fs >= 80)


def test_a_spot_only_on_a_panels_edge_pixels_is_not_found():
    # The reference starts groups only from pixels off the panel's edge rows and columns.
    frame = _frame([], seed=4)
    frame[0, 30:33] = 200.0  # on the first row only
    frame[50:53, 159] = 200.0  # on the last column only
    frame[95, 100] = frame[94, 100] = 200.0  # reaches one row into the panel: found
    peaks = _finder().find_peaks(frame)
    assert_same_peaks(peaks, _reference(frame)[0])
    assert len(peaks) == 1 and peaks.ss[0] == pytest.approx(94.5, abs=0.01)


def test_resolution_limits_and_max_num_peaks():
    spots = _spots(5)
    frame = _frame(spots, seed=5)
    peaks = _finder(min_res=70.0, max_res=110.0).find_peaks(frame)
    assert len(peaks) > 0 and np.all((peaks.radius > 68.0) & (peaks.radius < 112.0))
    assert_same_peaks(peaks, _reference(frame, min_res=70.0, max_res=110.0)[0])
    everything = _finder().find_peaks(frame)
    first = _finder(max_num_peaks=5).find_peaks(frame)
    assert len(first) == 5  # the first five found, as the reference returns them
    np.testing.assert_array_equal(first.fs, everything.fs[:5])
    # Search order: panel by panel, raster order of each group's first pixel.
    left = everything.fs < 80
    assert np.all(np.diff(left.astype(int)) <= 0)
    assert len(_finder(max_num_peaks=0).find_peaks(frame)) == 0


def test_peak_list_fields():
    frame = _frame([(30.0, 40.0, 1000.0)], seed=2)
    peaks = _finder().find_peaks(frame)
    assert len(peaks) == 1
    assert peaks._fields == ("fs", "ss", "intensity", "num_pixels", "max_pixel_intensity",
                             "snr", "radius")
    for field in peaks:
        assert field.dtype == np.float64 and field.shape == (1,)
    assert peaks.intensity[0] == pytest.approx(1000.0, rel=0.1)
    assert peaks.radius[0] == pytest.approx(np.hypot(30.0 - 70.3, 40.0 + 40.0), abs=0.5)
    assert peaks._replace(snr=peaks.snr * 2).snr[0] == 2 * peaks.snr[0]
    assert len(PeakList.empty()) == 0
    assert len(_finder().find_peaks(np.zeros(SHAPE, dtype=np.float32))) == 0
    assert len(_finder().find_peaks(np.full(SHAPE, np.nan, dtype=np.float32))) == 0
    # Other real dtypes are converted.
    assert len(_finder().find_peaks(frame.astype(np.float64))) == 1


def test_many_groups_grow_the_output():
    # 8192 spot pixels: more seeds than the initial output capacity (4096); the output grows
    # and nothing is lost.
    shape = (520, 520)
    radius = np.hypot(*np.mgrid[0:shape[0], 0:shape[1]]) + 10.0
    frame = np.random.default_rng(0).normal(1.0, 1.0, shape).astype(np.float32)
    frame[4:-4:8, 4:-4:8] = 1000.0
    frame[4:-4:8, 5:-4:8] = 1000.0  # 2-pixel spots every 8 pixels
    kwargs = dict(SYNTHETIC, max_num_peaks=100000, radius_map=radius,
                  panels=[(0, shape[1] - 1, 0, shape[0] - 1)])
    peaks = Peakfinder8PeakDetection(**kwargs).find_peaks(frame)
    assert len(peaks) > 2000
    assert_same_peaks(peaks, find_peaks_reference(frame, **kwargs))


def test_wrong_frame_shape_is_rejected():
    finder = _finder()
    with pytest.raises(OmInvalidDataError, match="shape"):
        finder.find_peaks(np.zeros((SHAPE[0], SHAPE[1] + 1), dtype=np.float32))
    with pytest.raises(OmInvalidDataError):
        finder.find_peaks(np.zeros(SHAPE[0] * SHAPE[1], dtype=np.float32))
    with pytest.raises(OmInvalidDataError):
        finder.find_peaks(np.zeros(SHAPE, dtype=np.complex64))


@pytest.mark.parametrize("overrides", [
    dict(minimum_snr=0.0), dict(min_pixel_count=0), dict(max_pixel_count=1, min_pixel_count=2),
    dict(local_bg_radius=0), dict(max_res=-1.0), dict(max_num_peaks=-1),
    dict(panels=[(0, 200, 0, 10)]), dict(panels=[(0, 10, 0, 10), (5, 20, 0, 10)]),
    dict(bad_pixel_map=np.ones((3, 3))), dict(radial_stats_iterations=0),
])
def test_invalid_parameters(overrides):
    kwargs = dict(SYNTHETIC, radius_map=_radius_map(), panels=PANELS)
    kwargs.update(overrides)
    with pytest.raises(OmConfigurationError):
        Peakfinder8PeakDetection(**kwargs)


def test_set_thresholds_gives_the_peaks_of_a_new_instance(real_module):
    """The parameter tweaker changes thresholds on one instance: its peaks are those of a new
    instance with the new values, frame after frame (the kept core ranges change nothing)."""
    frames = real_module["converted_reference"][:3].astype(np.float32)
    frames[frames > 30000] = np.nan
    shape = frames.shape[1:]
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    radius = np.hypot(yy - 600.0, xx - 50.0).astype(np.float32)
    panels = [(0, shape[1] - 1, 0, shape[0] - 1)]
    kept = Peakfinder8PeakDetection(radius_map=radius, panels=panels, **DEFAULT_PARAMETERS)
    for snr, threshold in ((5.0, 5.0), (9.0, 3.0), (4.0, 20.0)):
        changed = dict(DEFAULT_PARAMETERS, minimum_snr=snr, adc_threshold=threshold)
        kept.set_thresholds(**{key: changed[key] for key in (
            "adc_threshold", "minimum_snr", "min_pixel_count", "max_pixel_count",
            "max_num_peaks")})
        fresh = Peakfinder8PeakDetection(radius_map=radius, panels=panels, **changed)
        for frame in frames:
            ours, theirs = kept.find_peaks(frame), fresh.find_peaks(frame)
            assert len(ours) > 0
            for field in ("fs", "ss", "intensity", "num_pixels"):
                np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    with pytest.raises(OmConfigurationError, match="max_pixel_count"):
        kept.set_thresholds(adc_threshold=5.0, minimum_snr=5.0, min_pixel_count=10,
                            max_pixel_count=2, max_num_peaks=100)
