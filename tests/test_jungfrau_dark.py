# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of om_jungfrau_dark.py: pedestals, noise and bad pixels from JUNGFRAU dark runs.

The simulator sends the three dark runs of its simulated detector over real ZeroMQ sockets on
127.0.0.1 and the tool must recover the detector's pedestals within the noise; HDF5 inputs (a
synthetic run with injected bad pixels, the real module file) and bad input go through the
installed script.
"""

import re
import subprocess

import h5py
import numpy as np
import pytest
from helpers import BIN, Process, free_port, simulator_command

from om.data_retrieval_layer.jungfrau_bad_pixels import RULES
from om.data_retrieval_layer.jungfrau_calibration import (
    JungfrauCalibration,
    read_dark_file,
)
from om.data_retrieval_layer.jungfrau_calibration_files import write_calibration_files
from om.data_retrieval_layer.jungfrau_dark_accumulator import DarkAccumulator
from om.lib.geometry import load_bad_pixel_map
from om.simulation.jungfrau_frames import SyntheticJungfrau

TOOL = str(BIN / "om_jungfrau_dark.py")
STREAM_FRAMES = 100
STAGES = ("G0", "G1", "G2")


def run_tool(*arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([TOOL, *arguments], capture_output=True, text=True, timeout=timeout,
                          check=False)


def dark_files(directory, n_modules: int) -> list[str]:
    return [str(directory / f"jungfrau_dark_module{m}.h5") for m in range(n_modules)]


def read_output(directory, n_modules: int) -> dict[str, np.ndarray]:
    """Pedestals (ADC, via the calibration's reader), rms, count: (n_modules, 3, 512, 1024)."""
    pedestal = np.stack([read_dark_file(name, "word") for name in dark_files(directory,
                                                                               n_modules)])
    rms, count = [], []
    for name in dark_files(directory, n_modules):
        with h5py.File(name, "r") as handle:
            rms.append([handle[f"rms{s}"][()] for s in range(3)])
            count.append([handle[f"count{s}"][()] for s in range(3)])
    return {"pedestal": pedestal, "rms": np.array(rms), "count": np.array(count)}


# ------------------------------------------------------------------ the stream, simulated darks


@pytest.fixture(scope="module")
def simulated_detector() -> SyntheticJungfrau:
    """The simulator's detector (om_jungfrau_zmq_simulator.py's default: 2 modules, seed 0)."""
    return SyntheticJungfrau(n_modules=2, seed=0)


@pytest.fixture(scope="module")
def stream_darks(tmp_path_factory):
    """Runs the tool on the stream while the simulator sends the G0, G1 and G2 dark runs one
    after the other, as at the beamline; returns (output folder, the tool's stdout)."""
    tmp = tmp_path_factory.mktemp("stream_darks")
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    # --queue as large as a run: no frame is skipped even if this machine is slow.
    tool = Process([TOOL, "--urls", urls, "--frames", str(STREAM_FRAMES), "--queue",
                    str(STREAM_FRAMES), "--timeout", "60", "-o", str(tmp / "darks")], tmp, "tool")
    try:
        for number, stage in enumerate(STAGES):
            simulator = Process(simulator_command(
                urls, "--dark-stage", stage, "--frames", str(STREAM_FRAMES), "--pool",
                str(STREAM_FRAMES), "--rate", "100", "--wait-for-subscribers", "30",
                "--first-frame-number", str(1 + 10_000 * number)), tmp, f"simulator_{stage}")
            try:
                assert simulator.wait(90) == 0, simulator.stderr
            finally:
                simulator.stop()
        assert tool.wait(60) == 0, tool.stderr
    finally:
        tool.stop()
    return tmp / "darks", tool.stdout


def test_stream_dark_runs_recover_the_simulated_pedestals(stream_darks, simulated_detector):
    directory, stdout = stream_darks
    out = read_output(directory, 2)
    truth = simulated_detector.pedestals_adc
    assert f"frames per stage: G0 {STREAM_FRAMES}, G1 {STREAM_FRAMES}, G2 {STREAM_FRAMES}" in stdout
    for stage in range(3):
        noise = simulated_detector.noise_adu(stage).reshape(2, 512, 1024)
        assert (out["count"][:, stage] == STREAM_FRAMES).all()
        error = np.abs(out["pedestal"][:, stage] - truth[:, stage]) / (
            noise / np.sqrt(STREAM_FRAMES))
        within = float(np.mean(error < 5.0))
        median_rms = float(np.median(out["rms"][:, stage]))
        print(f"{STAGES[stage]}: max |error| = {error.max():.2f} x noise/sqrt(n), "
              f"{100 * within:.4f} % within 5 x noise/sqrt(n), median RMS {median_rms:.3f} ADU "
              f"(simulated {np.median(noise):.3f})")
        assert within >= 0.999
        assert median_rms == pytest.approx(float(np.median(noise)), rel=0.02)
    # The bad pixel map loads as the monitor loads it, and a clean detector has no bad pixel.
    bad_map = directory / "jungfrau_bad_pixel_map.h5"
    assert load_bad_pixel_map(bad_map, "/data/data", (1024, 1024)).all()


def test_stream_darks_calibrate_a_dark_frame_to_zero_photons(stream_darks, simulated_detector,
                                                             tmp_path):
    directory, _ = stream_darks
    _, gains = write_calibration_files(tmp_path, pedestals_adc=simulated_detector.pedestals_adc,
                                       gains_adu_per_kev=simulated_detector.gains_adu_per_kev)
    calibration = JungfrauCalibration.from_files(
        dark_filenames=dark_files(directory, 2), gain_filenames=gains, photon_energy_kev=12.4,
        double_pixels="keep")
    assert calibration.uncalibratable_pixels == 0
    for stage in range(3):
        # A frame the tool never saw (the simulator's pool holds indices 0-99).
        frame, counts = calibration.calibrate(simulated_detector.dark_frame(5000, stage))
        assert counts.total() == 0
        adu_per_photon = np.abs(simulated_detector.gains_adu_per_kev[:, stage]) * 12.4
        noise_photons = float(np.median(simulated_detector.noise_adu(stage).reshape(
            2, 512, 1024) / adu_per_photon))
        assert abs(float(frame.mean())) < 0.01 * max(noise_photons, 1.0)
        assert float(frame.std()) == pytest.approx(noise_photons, rel=0.1)


# ------------------------------------------------------------------ files, injected bad pixels


@pytest.fixture(scope="module")
def injected_runs(tmp_path_factory):
    """Three HDF5 dark runs of a one-module simulated detector with injected bad pixels.

    Returns (files, detector, {rule: (stage, flat pixel indices)}).
    """
    tmp = tmp_path_factory.mktemp("injected")
    detector = SyntheticJungfrau(n_modules=1, seed=11)
    n_frames = 30
    runs = [np.stack([detector.dark_frame(i, s) for i in range(n_frames)]) for s in range(3)]
    rng = np.random.default_rng(5)
    pixels = rng.choice(512 * 1024, size=4 * 25, replace=False).reshape(4, 25)
    flat = [run.reshape(n_frames, -1) for run in runs]
    injected = {}
    # stuck: the G0 word never changes
    flat[0][:, pixels[0]] = flat[0][0, pixels[0]]
    injected["stuck"] = (0, pixels[0])
    # noisy: G1 noise 20x the module's (3 ADU -> ~60 ADU RMS)
    noise = np.rint(60.0 * rng.standard_normal((n_frames, 25))).astype(np.int32)
    adc = (flat[1][:, pixels[1]] & 0x3FFF).astype(np.int32) + noise
    flat[1][:, pixels[1]] = np.uint16(1 << 14) | np.clip(adc, 0, 0x3FFF).astype(np.uint16)
    injected["noisy"] = (1, pixels[1])
    # never_seen: pixels that stay in G0 during the forced-G2 run
    flat[2][:, pixels[2]] = flat[0][:, pixels[2]] & 0x3FFF
    injected["never_seen"] = (2, pixels[2])
    # pedestal_range: G0 ADC at the bottom of the range (0 and 1 alternately: mean 0.5)
    flat[0][:, pixels[3]] = (np.arange(n_frames) % 2)[:, None].astype(np.uint16)
    injected["pedestal_range"] = (0, pixels[3])
    files = []
    for stage, run in enumerate(runs):
        name = tmp / f"dark_{STAGES[stage]}.h5"
        with h5py.File(name, "w") as handle:
            handle["raw"] = run
        files.append(str(name))
    return files, detector, injected


def test_files_find_each_injected_bad_pixel(injected_runs, tmp_path):
    files, detector, injected = injected_runs
    result = run_tool("--file", files[0], "--file", files[1], "--file", files[2],
                      "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "out" / "jungfrau_bad_pixel_map.h5", "r") as handle:
        reasons = handle["/data/reasons"][()].reshape(-1)
        good = handle["/data/data"][()].reshape(-1)
    all_injected = np.concatenate([pixels for _, pixels in injected.values()])
    assert set(np.flatnonzero(good == 0)) == set(all_injected)
    for rule, (stage, pixels) in injected.items():
        found = np.flatnonzero(reasons & (1 << (3 * RULES.index(rule) + stage)))
        print(f"{rule} in {STAGES[stage]}: injected {pixels.size}, found {found.size}")
        assert set(found) == set(pixels)
        # No other stage flags these pixels, nor this rule any other pixel.
        in_any_stage = sum(1 << (3 * RULES.index(rule) + s) for s in range(3))
        assert set(np.flatnonzero(reasons & in_any_stage)) == set(pixels)
        # The summary's row of the rule: G0, G1, G2, any.
        row = re.search(rf"^  {rule} +(\d+) +(\d+) +(\d+) +(\d+)", result.stdout,
                        re.MULTILINE)
        assert row is not None and int(row.group(1 + stage)) == pixels.size, result.stdout
    # Untouched pixels have their simulated pedestals within the noise.
    out = read_output(tmp_path / "out", 1)
    clean = np.ones(512 * 1024, dtype=bool)
    clean[all_injected] = False
    for stage in range(3):
        error = np.abs(out["pedestal"][0, stage].reshape(-1) - detector.pedestals_adc[
            0, stage].reshape(-1)) / (detector.noise_adu(stage).reshape(-1) / np.sqrt(30))
        assert np.mean(error[clean] < 5.0) >= 0.999
    # The never-seen stage has no pedestal (NaN, which the calibration makes NaN) and count 0.
    stage, pixels = injected["never_seen"]
    assert np.isnan(out["pedestal"][0, stage].reshape(-1)[pixels]).all()
    assert (out["count"][0, stage].reshape(-1)[pixels] == 0).all()


def test_accumulator_counts_each_reading_in_its_own_stage():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 0x4000, size=(6, 512, 1024), dtype=np.uint16)
    codes = rng.choice(np.array([0, 1, 3, 2], dtype=np.uint16), size=frames.shape,
                       p=[0.7, 0.15, 0.1, 0.05])
    frames |= codes << np.uint16(14)
    frames[0, :3, :5] = 0xFFFF  # missing pixels are not readings
    accumulator = DarkAccumulator(1)
    for frame in frames:
        assert accumulator.add(frame) == 0
    statistics = accumulator.statistics()
    assert statistics.frames == (6, 0, 0)
    valid = frames != 0xFFFF
    adc = (frames & 0x3FFF).astype(np.float64)
    for stage, code in enumerate((0, 1, 3)):
        mask = valid & ((frames >> 14) == code)
        count = mask.sum(axis=0)
        assert (statistics.count[0, stage] == count).all()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(mask, adc, 0).sum(axis=0) / count
            variance = np.where(mask, (adc - mean) ** 2, 0).sum(axis=0) / (count - 1)
        np.testing.assert_allclose(statistics.pedestal[0, stage][count > 0], mean[count > 0],
                                   rtol=1e-12)
        np.testing.assert_allclose(statistics.rms[0, stage][count > 1],
                                   np.sqrt(variance[count > 1]), rtol=1e-9, atol=1e-9)
        assert np.isnan(statistics.pedestal[0, stage][count == 0]).all()
    assert accumulator.skipped_pixels == int((~valid).sum() + ((frames >> 14) == 2).sum())


# ------------------------------------------------------------------ the real module file


def test_real_module_file_refreshes_g0(real_module_file, real_module, real_calibration,
                                       tmp_path):
    # The real file holds beam frames, not a dark run: the tool must run on them; their G0
    # "pedestal" is the real pedestal plus the photons; G1 and G2 are kept from the real darks.
    darks, gains = real_calibration
    result = run_tool("--file", str(real_module_file), "--stages", "G0", "--previous-darks",
                      darks[0], "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "frames per stage: G0 20" in result.stdout
    out = read_output(tmp_path / "out", 1)
    np.testing.assert_allclose(out["pedestal"][0, 1:], real_module["pedestal"][1:], atol=0.01)
    seen = out["count"][0, 0] >= 10
    above = out["pedestal"][0, 0] - real_module["pedestal"][0]
    noise = real_module["pedestal_g0_rms"] / np.sqrt(np.maximum(out["count"][0, 0], 1))
    assert seen.mean() > 0.99
    assert np.mean(above[seen] > -5 * noise[seen]) > 0.99
    calibration = JungfrauCalibration.from_files(
        dark_filenames=dark_files(tmp_path / "out", 1), gain_filenames=gains[:1],
        photon_energy_kev=12.4)
    assert calibration.pedestals.shape == (1, 3, 512, 1024)
    bad = load_bad_pixel_map(tmp_path / "out" / "jungfrau_bad_pixel_map.h5", "/data/data",
                             (512, 1024))
    assert 0.5 < bad.mean() < 1.0


# ------------------------------------------------------------------ bad input


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("om_jungfrau_dark.py: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_missing_file(tmp_path):
    line = one_line_error(run_tool("--file", str(tmp_path / "absent.h5"), "-o", str(tmp_path)))
    assert "absent.h5: no such file" in line


def test_wrong_dtype_and_unknown_dataset(tmp_path):
    name = tmp_path / "int16.h5"
    with h5py.File(name, "w") as handle:
        handle["raw"] = np.zeros((3, 512, 1024), dtype=np.int16)
    line = one_line_error(run_tool("--file", str(name), "-o", str(tmp_path / "out")))
    assert "int16" in line and "uint16" in line
    line = one_line_error(run_tool("--file", str(name), "--dataset", "frames",
                                   "-o", str(tmp_path / "out")))
    assert "no dataset 'frames'" in line
    assert not (tmp_path / "out").exists()


def test_no_frames_within_the_timeout(tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    line = one_line_error(run_tool("--urls", url, "--timeout", "1", "-o", str(tmp_path / "out")))
    assert f"no frame arrived within 1 s from {url}" in line
    assert not (tmp_path / "out").exists()
