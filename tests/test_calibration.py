# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the JUNGFRAU calibration (om.data_retrieval_layer.jungfrau_calibration)."""

import logging

import h5py
import numpy as np
import pytest

from om.data_retrieval_layer.jungfrau_calibration import (
    CalibrationCounts,
    JungfrauCalibration,
    double_pixel_factors,
    read_dark_file,
)
from om.lib.exceptions import OmConfigurationError, OmInvalidDataError

MODULE = (512, 1024)
REFERENCE_INVALID = 32678.0  # Jungfraujoch's mark of saturated/invalid pixels


def write_om_layout(directory, pedestals, gains_adu_per_kev, convention):
    """Writes one module per entry of ``pedestals`` (n, 3, 512, 1024) in OM's file layout."""
    directory.mkdir(parents=True, exist_ok=True)
    offsets = (0.0, 16384.0, 49152.0) if convention == "word" else (0.0, 0.0, 0.0)
    darks, gain_files = [], []
    for module in range(pedestals.shape[0]):
        dark = directory / f"dark_{convention}_{module}.h5"
        with h5py.File(dark, "w") as handle:
            for stage in range(3):
                values = pedestals[module, stage].astype(np.float64) + offsets[stage]
                handle.create_dataset(f"gain{stage}", data=values.astype(np.float32))
        gain = directory / f"gain_{module}.bin"
        np.asarray(gains_adu_per_kev[module], dtype="<f8").tofile(gain)
        darks.append(str(dark))
        gain_files.append(str(gain))
    return darks, gain_files


def flat_calibration(n_modules=1, **options):
    """A calibration with simple constants: P = (1000, 12000, 13000), G = (40, -1.5, -0.1)."""
    pedestals = np.empty((n_modules, 3, *MODULE), dtype=np.float32)
    gains = np.empty((n_modules, 3, *MODULE), dtype=np.float32)
    for stage, (pedestal, gain) in enumerate(((1000.0, 40.0), (12000.0, -1.5), (13000.0, -0.1))):
        pedestals[:, stage] = pedestal
        gains[:, stage] = gain
    options.setdefault("photon_energy_kev", 10.0)
    return JungfrauCalibration(pedestals, gains, **options), pedestals, gains


# ---------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_files(real_module, tmp_path_factory):
    """The real module's pedestals and gains written in OM's layout, for both conventions."""
    energy_kev = real_module["photon_energy_eV"] / 1000.0
    gains = real_module["gain_adu_per_photon"].astype(np.float64) / energy_kev
    directory = tmp_path_factory.mktemp("real_calibration")
    pedestals = real_module["pedestal"][None]
    return {
        convention: write_om_layout(directory / convention, pedestals, gains[None], convention)
        for convention in ("adc", "word")
    }


@pytest.mark.parametrize("convention", ["adc", "word"])
def test_real_frames_match_jungfraujoch(real_module, real_files, convention):
    darks, gain_files = real_files[convention]
    energy_kev = real_module["photon_energy_eV"] / 1000.0
    calibration = JungfrauCalibration.from_files(
        dark_filenames=darks,
        gain_filenames=gain_files,
        photon_energy_kev=energy_kev,
        units="photons",
        double_pixels="keep",
        pedestal_convention=convention,
    )
    raw = real_module["raw"]
    reference = real_module["converted_reference"]
    out = np.empty(MODULE, dtype=np.float32)
    differences = []
    saturated = 0
    for index in range(raw.shape[0]):
        counts = calibration.calibrate_module(raw[index], 0, out)
        valid = reference[index] < 30000
        differences.append(np.abs(out[valid] - reference[index][valid]))
        # Jungfraujoch's invalid marks are exactly our non-finite pixels (here: saturated G2
        # pixels, +inf).
        assert np.array_equal(~np.isfinite(out), reference[index] == REFERENCE_INVALID)
        assert np.isposinf(out).sum() == counts.saturated
        assert counts.missing == 0 and counts.invalid_gain == 0
        saturated += counts.saturated
    differences = np.concatenate(differences)
    median = float(np.median(differences))
    print(
        f"\nconvention {convention}: median |ours - Jungfraujoch| = {median:.3g} photon, "
        f"99th percentile {np.percentile(differences, 99):.3g}, over {differences.size} pixels; "
        f"{saturated} saturated pixels"
    )
    assert median < 0.01
    assert saturated == int((reference == REFERENCE_INVALID).sum())


@pytest.mark.parametrize("convention", ["adc", "word"])
def test_auto_convention_detection(real_module, real_files, convention, caplog):
    darks, _ = real_files[convention]
    with caplog.at_level(logging.INFO, logger="om"):
        automatic = read_dark_file(darks[0], "auto")
    assert f"convention '{convention}'" in caplog.text
    np.testing.assert_allclose(automatic, real_module["pedestal"], atol=0.01)
    np.testing.assert_array_equal(automatic, read_dark_file(darks[0], convention))


def test_explicit_convention_that_does_not_fit_is_refused(real_files):
    darks, _ = real_files["word"]
    with pytest.raises(OmConfigurationError, match="convention 'adc'") as error:
        read_dark_file(darks[0], "adc")
    assert darks[0] in str(error.value)


def test_real_frame_from_readonly_buffer_into_frame_view(real_module, real_files):
    darks, gain_files = real_files["adc"]
    calibration = JungfrauCalibration.from_files(
        dark_filenames=darks,
        gain_filenames=gain_files,
        photon_energy_kev=12.4,
        double_pixels="keep",
    )
    raw = real_module["raw"][0]
    message = raw.tobytes()  # like a ZeroMQ frame: a read-only buffer
    words = np.frombuffer(message, dtype=np.uint16).reshape(MODULE)
    frame = np.zeros((1024, 1024), dtype=np.float32)
    calibration.calibrate_module(words, 0, frame[512:])
    expected = np.empty(MODULE, dtype=np.float32)
    calibration.calibrate_module(np.ascontiguousarray(raw), 0, expected)
    np.testing.assert_array_equal(frame[512:], expected)
    assert not frame[:512].any()


# ---------------------------------------------------------------------------- special pixels


def test_special_pixels_become_nan_or_inf_and_are_counted():
    calibration, _, _ = flat_calibration(double_pixels="keep")
    raw = np.full(MODULE, 1000 + 400, dtype=np.uint16)  # G0, 400 ADU = 1 photon of 10 keV
    raw[0, :3] = 0xFFFF  # missing packet
    raw[1, :5] = (0b10 << 14) | 123  # invalid gain code
    raw[2, 0] = 0b01 << 14  # G1 ADC 0: saturated
    raw[2, 1] = 0b11 << 14  # G2 ADC 0: saturated
    raw[3, 0] = (0b01 << 14) | 11850  # G1: (11850 - 12000) / -1.5 = 100 keV = 10 photons
    raw[3, 1] = (0b11 << 14) | 12000  # G2: (12000 - 13000) / -0.1 = 10000 keV = 1000 photons
    raw[3, 2] = 0b11 << 14 | 0x3FFE  # G2 with the largest ADC that is not 0xFFFF
    out = np.zeros(MODULE, dtype=np.float32)
    counts = calibration.calibrate_module(raw, 0, out)
    assert counts == CalibrationCounts(missing=3, invalid_gain=5, saturated=2)
    assert counts.total() == 10
    assert np.isnan(out[0, :3]).all() and np.isnan(out[1, :5]).all()
    assert np.isposinf(out[2, :2]).all()  # the saturation mark (om/processing_layer/saturation.py)
    assert np.isnan(out).sum() == 8 and np.isinf(out).sum() == 2
    assert out[3, 0] == pytest.approx(10.0, rel=1e-6)
    assert out[3, 1] == pytest.approx(1000.0, rel=1e-6)
    assert out[3, 2] == pytest.approx((0x3FFE - 13000) / -0.1 / 10.0, rel=1e-6)
    assert np.all(out[4:] == pytest.approx(1.0, rel=1e-6))


def test_whole_frame_counts_sum_over_modules():
    calibration, _, _ = flat_calibration(n_modules=2, double_pixels="keep")
    raw = np.full((1024, 1024), 1000, dtype=np.uint16)
    raw[10, 10] = 0xFFFF
    raw[600, 20:22] = 0xFFFF
    raw[700, 0] = 0b10 << 14
    frame, counts = calibration.calibrate(raw)
    assert frame.dtype == np.float32 and frame.shape == (1024, 1024)
    assert counts == CalibrationCounts(3, 1, 0)
    assert np.isnan(frame).sum() == 4
    assert np.nanmax(np.abs(frame)) == 0.0


def test_double_pixels_divided_and_units():
    keep, _, _ = flat_calibration(double_pixels="keep")
    divide, _, _ = flat_calibration()
    kev, _, _ = flat_calibration(units="keV", double_pixels="keep")
    raw = np.full(MODULE, 1000 + 800, dtype=np.uint16)  # 2 photons of 10 keV everywhere
    kept = np.empty(MODULE, np.float32)
    divided = np.empty(MODULE, np.float32)
    energy = np.empty(MODULE, np.float32)
    keep.calibrate_module(raw, 0, kept)
    divide.calibrate_module(raw, 0, divided)
    kev.calibrate_module(raw, 0, energy)
    np.testing.assert_allclose(kept, 2.0, rtol=1e-6)
    np.testing.assert_allclose(energy, 20.0, rtol=1e-6)
    np.testing.assert_allclose(divided, 2.0 * double_pixel_factors(), rtol=1e-6)
    assert divided[100, 255] == pytest.approx(1.0) and divided[256, 100] == pytest.approx(1.0)
    assert divided[255, 511] == pytest.approx(0.5) and divided[256, 768] == pytest.approx(0.5)
    assert divided[100, 254] == pytest.approx(2.0) and divided[257, 769] == pytest.approx(2.0)
    assert (double_pixel_factors() == 0.25).sum() == 12  # 2 rows x 6 columns
    assert (double_pixel_factors() == 0.5).sum() == 2 * 1024 + 6 * 512 - 2 * 12


def test_zero_gain_pixel_reads_nan():
    _, pedestals, gains = flat_calibration()
    gains[0, 0, 5, 5] = 0.0
    calibration = JungfrauCalibration(pedestals, gains, photon_energy_kev=10.0)
    assert calibration.uncalibratable_pixels == 1
    out = np.empty(MODULE, np.float32)
    calibration.calibrate_module(np.full(MODULE, 1400, np.uint16), 0, out)
    assert np.isnan(out[5, 5]) and np.isnan(out).sum() == 1


# ---------------------------------------------------------------------------- wrong input


def test_wrong_raw_or_out_raise_invalid_data():
    calibration, _, _ = flat_calibration()
    out = np.empty(MODULE, np.float32)
    with pytest.raises(OmInvalidDataError, match="uint16") as error:
        calibration.calibrate_module(np.zeros(MODULE, np.int16), 0, out)
    assert "int16 turns G2 words negative" in str(error.value)
    with pytest.raises(OmInvalidDataError, match=r"\(256, 1024\)"):
        calibration.calibrate_module(np.zeros((256, 1024), np.uint16), 0, out)
    with pytest.raises(OmInvalidDataError, match="out must be float32"):
        calibration.calibrate_module(np.zeros(MODULE, np.uint16), 0, np.empty(MODULE, np.float64))
    readonly = np.empty(MODULE, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(OmInvalidDataError, match="read-only"):
        calibration.calibrate_module(np.zeros(MODULE, np.uint16), 0, readonly)
    with pytest.raises(OmInvalidDataError, match="module index 1"):
        calibration.calibrate_module(np.zeros(MODULE, np.uint16), 1, out)
    with pytest.raises(OmInvalidDataError, match="raw frame must be uint16"):
        calibration.calibrate(np.zeros((1024, 1024), np.uint16))
    for error in (OmInvalidDataError,):
        with pytest.raises(error) as info:
            calibration.calibrate_module(np.zeros(MODULE, ">u2"), 0, out)
        assert "\n" not in str(info.value)


def test_wrong_constructor_arguments():
    _, pedestals, gains = flat_calibration()
    with pytest.raises(OmConfigurationError, match="units"):
        JungfrauCalibration(pedestals, gains, 10.0, units="ADU")
    with pytest.raises(OmConfigurationError, match="double_pixels"):
        JungfrauCalibration(pedestals, gains, 10.0, double_pixels="mask")
    with pytest.raises(OmConfigurationError, match="photon energy"):
        JungfrauCalibration(pedestals, gains, 0.0)
    with pytest.raises(OmConfigurationError, match="shape"):
        JungfrauCalibration(pedestals[:, :2], gains[:, :2], 10.0)


@pytest.fixture
def good_files(tmp_path):
    _, pedestals, gains = flat_calibration(n_modules=2)
    return write_om_layout(tmp_path, pedestals, gains, "word")


def _from_files(darks, gain_files, **options):
    return JungfrauCalibration.from_files(
        dark_filenames=darks, gain_filenames=gain_files, photon_energy_kev=10.0, **options
    )


def _assert_one_line_naming(error, *names):
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message


def _assert_refused(darks, gain_files, match, *names):
    """Loading the files fails with one line that matches ``match`` and names ``names``."""
    with pytest.raises(OmConfigurationError, match=match) as error:
        _from_files(darks, gain_files)
    _assert_one_line_naming(error, *names)


def _write_dark(path, stages, shape=MODULE):
    """A dark file with zero datasets ``gain<stage>`` of ``shape`` for the given stages."""
    with h5py.File(path, "w") as handle:
        for stage in stages:
            handle[f"gain{stage}"] = np.zeros(shape, np.float32)
    return path


def test_good_files_load(good_files):
    calibration = _from_files(*good_files)
    assert calibration.n_modules == 2 and calibration.frame_shape == (1024, 1024)
    np.testing.assert_allclose(calibration.pedestals[1, 2], 13000.0)


def test_missing_dark_file(good_files, tmp_path):
    darks, gain_files = good_files
    missing = tmp_path / "no_such_dark.h5"
    _assert_refused([darks[0], str(missing)], gain_files, "not found", missing)


def test_missing_gain_file(good_files, tmp_path):
    darks, gain_files = good_files
    missing = tmp_path / "no_such_gain.bin"
    _assert_refused(darks, [str(missing), gain_files[1]], "not found", missing)


def test_gain_file_of_wrong_size(good_files, tmp_path):
    darks, gain_files = good_files
    short = tmp_path / "short_gain.bin"
    np.zeros((3, 512, 1024), dtype=np.float32).tofile(short)  # float32 instead of float64
    _assert_refused(darks, [gain_files[0], str(short)], "bytes", short, 6291456)


def test_missing_dataset(good_files, tmp_path):
    darks, gain_files = good_files
    broken = _write_dark(tmp_path / "dark_without_gain2.h5", (0, 1))
    _assert_refused([str(broken), darks[1]], gain_files, "missing", broken, "gain2")


def test_dataset_of_wrong_shape(good_files, tmp_path):
    darks, gain_files = good_files
    broken = _write_dark(tmp_path / "dark_half_module.h5", range(3), (256, 1024))
    _assert_refused([str(broken), darks[1]], gain_files, "shape", broken, "gain0")


def test_dark_file_that_is_not_hdf5(good_files, tmp_path):
    darks, gain_files = good_files
    broken = tmp_path / "dark.txt"
    broken.write_text("not hdf5\n")
    _assert_refused([str(broken), darks[1]], gain_files, None, broken)


def test_unequal_numbers_of_files(good_files):
    darks, gain_files = good_files
    with pytest.raises(OmConfigurationError, match="2 dark files but 1 gain"):
        _from_files(darks, gain_files[:1])
    with pytest.raises(OmConfigurationError, match="pedestal_convention"):
        _from_files(darks, gain_files, pedestal_convention="psi")
