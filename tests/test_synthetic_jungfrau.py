# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the synthetic JUNGFRAU frames (om.simulation.jungfrau_frames)."""

import os

import h5py
import numpy as np
import pytest

from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration, double_pixel_factors
from om.simulation.jungfrau_frames import SyntheticJungfrau

G0, G1, G2 = 0b00, 0b01, 0b11


@pytest.fixture(scope="module")
def detector():
    return SyntheticJungfrau(seed=7)


@pytest.fixture(scope="module")
def frames(detector):
    """The first 12 frames of the detector: (index, frame)."""
    return [(index, detector.frame(index)) for index in range(12)]


@pytest.fixture(scope="module")
def calibration_files(detector, tmp_path_factory):
    return {
        convention: detector.write_calibration_files(
            tmp_path_factory.mktemp(convention), convention
        )
        for convention in ("word", "adc")
    }


def test_frame_layout_and_determinism(detector, frames):
    index, frame = frames[0]
    raw, is_hit, spots = detector.raw_frame(index)
    assert raw.dtype == np.uint16 and raw.shape == (1024, 1024)
    assert spots.dtype == np.float64 and spots.ndim == 2 and spots.shape[1] == 2
    again = SyntheticJungfrau(seed=7).raw_frame(index)
    np.testing.assert_array_equal(raw, again[0])
    assert again[1] == is_hit
    np.testing.assert_array_equal(spots, again[2])
    assert not np.array_equal(raw, frames[1][1].raw)
    assert not np.array_equal(raw, SyntheticJungfrau(seed=8).raw_frame(index)[0])
    # No word the calibration would read as missing or invalid.
    for _, other in frames:
        assert not (other.raw == 0xFFFF).any()
        assert not ((other.raw >> 14) == 0b10).any()


def test_hits_have_spots_and_non_hits_none(frames):
    hits = [frame for _, frame in frames if frame.is_hit]
    blanks = [frame for _, frame in frames if not frame.is_hit]
    assert hits and blanks  # hit_fraction 0.5 over 12 frames with this seed
    for frame in hits:
        assert 2 * 150 <= frame.spots.shape[0] <= 2 * 400
        assert frame.spot_photons.shape == (frame.spots.shape[0],)
        # Spots on both modules, inside the frame.
        assert (frame.spots[:, 0] < 512).any() and (frame.spots[:, 0] >= 512).any()
        assert frame.spots.min() >= 0 and frame.spots.max() < 1024
        assert ((frame.raw >> 14) != G0).any()
    for frame in blanks:
        assert frame.spots.shape == (0, 2)
        assert ((frame.raw >> 14) == G0).all()
        assert frame.photons.max() < 10


def test_hit_fraction_extremes():
    never = SyntheticJungfrau(hit_fraction=0.0, spots_per_hit=(10, 20))
    always = SyntheticJungfrau(hit_fraction=1.0, spots_per_hit=(10, 20))
    for index in range(5):
        assert not never.raw_frame(index)[1]
        raw, is_hit, spots = always.raw_frame(index)
        assert is_hit and 20 <= spots.shape[0] <= 40


def test_background_and_solvent_ring(detector, frames):
    blank = next(frame for _, frame in frames if not frame.is_hit)
    mean = float(blank.photons.mean())
    print(f"\nmean background {mean:.3f} photon/pixel")
    assert 0.05 <= mean <= 0.2
    ss, fs = np.indices(blank.photons.shape)
    radius = np.hypot(ss - detector.beam_centre[0], fs - detector.beam_centre[1])
    factors = np.tile(double_pixel_factors(), (2, 1))
    single = factors == 1.0
    on_ring = float(blank.photons[(np.abs(radius - 390) < 20) & single].mean())
    inside = float(blank.photons[(radius > 150) & (radius < 250) & single].mean())
    assert on_ring > 1.5 * inside
    # The double-size pixels collect twice (four times at ASIC corners) the background.
    background = detector.background
    assert background[100, 256] == pytest.approx(2 * background[100, 258], rel=0.05)
    assert background[700, 767] == pytest.approx(2 * background[700, 765], rel=0.05)
    assert background[255, 511] == pytest.approx(4 * background[253, 509], rel=0.05)


def test_strongest_spots_switch_gain(frames):
    hit = next(frame for _, frame in frames if frame.is_hit)
    strongest = np.argsort(hit.spot_photons)[-5:]
    codes = hit.raw >> 14
    for spot in strongest:
        ss, fs = np.rint(hit.spots[spot]).astype(int)
        patch = codes[ss - 1 : ss + 2, fs - 1 : fs + 2]
        assert (patch != G0).any(), f"spot of {hit.spot_photons[spot]:.0f} photons stayed in G0"
    all_codes = np.concatenate([(frame.raw >> 14).ravel() for _, frame in frames if frame.is_hit])
    n_g1, n_g2 = int((all_codes == G1).sum()), int((all_codes == G2).sum())
    print(f"\nG1 pixels {n_g1}, G2 pixels {n_g2} over the hits")
    assert n_g1 > 0 and n_g2 > 0


def test_gain_switching_follows_the_deposited_charge(detector, frames):
    # G0 until its 14-bit ADC would overflow, then G1 until its falling ADC would reach 0, then G2.
    def reading(stage, photons):
        pedestal = detector.pedestals_adc[:, stage].ravel()
        gain = detector.gains_adu_per_kev[:, stage].ravel() * detector.photon_energy_kev
        return pedestal + gain * photons

    n_g2 = 0
    for _, frame in frames:
        codes = (frame.raw >> 14).ravel()
        photons = frame.photons.ravel()
        g0_reading, g1_reading = reading(0, photons), reading(1, photons)
        assert (codes[g0_reading < 16383 - 300] == G0).all()
        assert (codes[(g0_reading > 16383 + 300) & (g1_reading > 50)] == G1).all()
        assert (codes[g1_reading < -50] == G2).all()
        n_g2 += int((codes == G2).sum())
    assert n_g2 > 0


@pytest.mark.parametrize("convention", ["word", "adc"])
def test_calibration_recovers_simulated_photons(detector, frames, calibration_files, convention):
    darks, gain_files = calibration_files[convention]
    calibration = JungfrauCalibration.from_files(
        dark_filenames=darks,
        gain_filenames=gain_files,
        photon_energy_kev=detector.photon_energy_kev,
        double_pixels="keep",
        pedestal_convention="auto",
    )
    for index, frame in frames[:6]:
        calibrated, counts = calibration.calibrate(frame.raw)
        truth = detector.expected_photons(index)
        codes = frame.raw >> 14
        assert counts.missing == 0 and counts.invalid_gain == 0
        assert np.isposinf(calibrated).sum() == counts.saturated
        assert not np.isnan(calibrated).any()
        g0 = codes == G0
        error = np.abs(calibrated - truth)
        # G0 noise ~0.05 photon: every G0 pixel rounds to the true number of photons.
        np.testing.assert_array_equal(np.rint(calibrated[g0]), truth[g0])
        assert float(np.median(error[g0])) < 0.1
        g1 = codes == G1
        if g1.any():
            assert error[g1].max() < 1.5  # G1 noise ~0.2 photon, ADC step 0.06 photon
        g2 = (codes == G2) & np.isfinite(calibrated)
        if g2.any():
            assert (error[g2] < 10 + 0.01 * truth[g2]).all()  # G2 ADC step ~0.7 photon


def test_double_pixels_divided_look_like_their_neighbours(detector, calibration_files):
    darks, gain_files = calibration_files["word"]
    calibration = JungfrauCalibration.from_files(
        dark_filenames=darks,
        gain_filenames=gain_files,
        photon_energy_kev=detector.photon_energy_kev,
    )
    blanks = [detector.frame(index) for index in range(12)]
    sums = sum(calibration.calibrate(frame.raw)[0] for frame in blanks if not frame.is_hit)
    double_columns = sums[:, [255, 256, 511, 512, 767, 768]].mean()
    neighbours = sums[:, [250, 260, 505, 518, 760, 775]].mean()
    assert double_columns == pytest.approx(neighbours, rel=0.15)


def test_calibration_file_layout(detector, calibration_files):
    darks, gain_files = calibration_files["word"]
    assert len(darks) == len(gain_files) == 2
    for module, (dark, gain) in enumerate(zip(darks, gain_files)):
        assert os.path.getsize(gain) == 3 * 512 * 1024 * 8
        gains = np.fromfile(gain, dtype="<f8").reshape(3, 512, 1024)
        np.testing.assert_array_equal(gains, detector.gains_adu_per_kev[module])
        assert np.median(gains[0]) == pytest.approx(41, rel=0.05)
        assert np.median(gains[1]) == pytest.approx(-1.4, rel=0.05)
        assert np.median(gains[2]) == pytest.approx(-0.11, rel=0.05)
        with h5py.File(dark, "r") as handle:
            for stage, offset in enumerate((0, 16384, 49152)):
                dataset = handle[f"gain{stage}"]
                assert dataset.dtype == np.float32 and dataset.shape == (512, 1024)
                np.testing.assert_allclose(
                    dataset[()] - offset, detector.pedestals_adc[module, stage], atol=0.01
                )
    adc_darks, _ = calibration_files["adc"]
    with h5py.File(adc_darks[1], "r") as handle:
        np.testing.assert_array_equal(handle["gain2"][()], detector.pedestals_adc[1, 2])


def test_detector_constants_are_plausible(detector):
    pedestals = detector.pedestals_adc
    assert 1000 <= pedestals[:, 0].min() and pedestals[:, 0].max() <= 3000
    assert 10000 <= pedestals[:, 1].min() and pedestals[:, 1].max() <= 14000
    assert 12000 <= pedestals[:, 2].min() and pedestals[:, 2].max() <= 15000
    noise_photons = np.median(detector.g0_noise) / (41 * detector.photon_energy_kev)
    assert 0.02 < noise_photons < 0.2
