# SPDX-License-Identifier: GPL-3.0-or-later
"""Saved frames for CrystFEL, with the whole monitor: simulator → ``mpiexec -n 3 om_monitor.py``.

The real JUNGFRAU frames of ``../shared/data`` go through the monitor with ``hit_saving`` on;
the test reads every saved file back with h5py and compares each frame and peak list with what
the monitor published for that event (the CrystFEL feed, ``ondaframedata``: the calibrated
frame in the detector's layout and the peaks in slab pixels), checks ``hits.lst`` against the
files, and parses ``hits.geom`` with cfel-fmt. Then the faults: SIGTERM mid-run, SIGKILL, and a
disk that fills up.
"""

import os
import pathlib
import re
import signal
import time

import h5py
import msgpack
import numpy as np
import psutil
import pytest
from cfel_fmt.geometry import load_crystfel_geometry
from ruamel.yaml import YAML

from om.lib.cxi_writer import PEAK_DATASETS

from calibration_reference import calibrate_reference
from helpers import (Process, configure, eventually, free_port, monitor_command, receive_until,
                     simulator_command, small_disk, subscriber)

pytestmark = pytest.mark.slow

_PEAK_FIELDS = {"peakXPosRaw": "fs", "peakYPosRaw": "ss", "peakTotalIntensity": "intensity"}


def _configure(tmp_path, geometry, calibration, output, **hit_saving):
    config, broadcast = configure(tmp_path, geometry, *calibration, frame_queue_size=8,
                                  crystfel_frames="all", non_hit_frame_sending_interval=1,
                                  crystfel_max_frames_per_second=1000.0)
    yaml = YAML()
    content = yaml.load(config.read_text())
    content["hit_saving"].update({"frames": "all", "output_directory": str(output),
                                  "min_free_disk_space_gb": 0.0, **hit_saving})
    with open(config, "w") as stream:
        yaml.dump(content, stream)
    return config, broadcast


def _start(tmp_path, config, real_module_file, frames, rate=20):
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    simulator = Process(simulator_command(urls, "--file", str(real_module_file), "--rate",
                                          str(rate), "--frames", str(frames)),
                        tmp_path, "simulator")
    return monitor, simulator


def _listed(output: pathlib.Path) -> list[tuple[str, int]]:
    path = output / "hits.lst"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(name, int(index[2:])) for name, index in (line.split() for line in lines)]


def _saved_frames(output: pathlib.Path) -> dict[str, dict]:
    """Every frame of every complete file, by event id: (file, index) and what was saved."""
    saved = {}
    for path in sorted(output.glob("*.cxi")):
        with h5py.File(path, "r") as handle:
            data = handle["/entry_1/data_1/data"]
            result = handle["/entry_1/result_1"]
            for index in range(data.shape[0]):
                n_peaks = int(result["nPeaks"][index])
                saved[handle["/entry_1/event_id"][index].decode()] = {
                    "where": (path.name, index),
                    "frame": data[index],
                    "peaks": {name: result[name][index, :n_peaks] for name in PEAK_DATASETS},
                    "is_hit": bool(handle["/entry_1/frame_is_hit"][index]),
                    "energy": handle["/entry_1/instrument_1/source_1/photon_energy_eV"][index],
                    "distance": handle["/entry_1/instrument_1/detector_1/"
                                       "detector_distance_mm"][index],
                }
    return saved


def _calibrated(real_module, event_id: str) -> np.ndarray:
    """The calibrated 1M frame of an event (the module twice), computed here from the raw
    frame by the tests' own numpy calibration."""
    raw_index = (int(event_id) - 1) % real_module["raw"].shape[0]
    energy_kev = real_module["photon_energy_eV"] / 1000
    return calibrate_reference(
        np.concatenate([real_module["raw"][raw_index]] * 2),
        np.stack([real_module["pedestal"]] * 2),
        np.stack([real_module["gain_adu_per_photon"]] * 2) / energy_kev, energy_kev)


def test_saved_frames_and_peaks_are_the_monitors(tmp_path, real_module_file, real_module,
                                                 geometry_1m, real_calibration):
    output = tmp_path / "saved"
    config, broadcast = _configure(tmp_path, geometry_1m, real_calibration, output,
                                   data_type="float32", frames_per_file=7)
    monitor, simulator = None, None
    published: dict[str, dict] = {}
    try:
        with subscriber(broadcast, b"ondaframedata") as feed, \
                subscriber(broadcast, b"omdata") as omdata:
            monitor, simulator = _start(tmp_path, config, real_module_file, 40)
            alive = lambda: monitor.popen.poll() is None  # noqa: E731
            deadline = time.monotonic() + 180
            last = {}
            while time.monotonic() < deadline and alive() and last.get("num_events", 0) < 40:
                if feed.poll(50):
                    parts = feed.recv_multipart()
                    message = msgpack.unpackb(parts[1], raw=False)
                    published[message["event_id"]] = message
                while omdata.poll(0):
                    last = receive_until(omdata, lambda m: True, 5)
            assert last.get("num_events") == 40, last
            while feed.poll(500):  # the last frames' payloads
                message = msgpack.unpackb(feed.recv_multipart()[1], raw=False)
                published[message["event_id"]] = message
        simulator.wait(30)
    finally:
        code = monitor.stop() if monitor else None
        if simulator:
            simulator.stop()
    print(monitor.stdout[-3000:], monitor.stderr[-3000:])
    assert code == 0
    saved = _saved_frames(output)
    assert len(saved) == 40  # frames: all
    assert not list(output.glob("*.part"))  # every file completed at the stop
    # hits.lst: exactly the saved frames, each once.
    listed = _listed(output)
    assert sorted(listed) == sorted(frame["where"] for frame in saved.values())
    # Files of at most 7 frames, two ranks writing their own files.
    names = {name for name, _ in listed}
    assert {re.search(r"-r(\d\d)-", name).group(1) for name in names} == {"01", "02"}
    # The frames published for CrystFEL: nearly all (a rank's first frame may come before it
    # knew of the subscriber); each equals the saved frame exactly, with the same peaks.
    compared = sorted(set(saved) & set(published))
    assert len(compared) >= 30, (len(compared), sorted(published))
    for event_id in compared:
        frame, message = saved[event_id], published[event_id]
        image = np.frombuffer(message["detector_data"]["data"], "<f4").reshape(
            message["detector_data"]["shape"])
        assert frame["frame"].dtype == np.float32
        np.testing.assert_array_equal(frame["frame"], image)
        for name, key in _PEAK_FIELDS.items():
            np.testing.assert_array_equal(
                frame["peaks"][name], np.asarray(message["peak_list"][key], np.float32))
        assert frame["is_hit"] == message["frame_is_hit"]
        assert frame["energy"] == message["beam_energy"] == 12400.0
        assert frame["distance"] == message["detector_distance"] == 100.0
    # Every saved frame is the calibration of its raw frame (computed here).
    for event_id, frame in saved.items():
        np.testing.assert_allclose(frame["frame"], _calibrated(real_module, event_id),
                                   rtol=1e-5, atol=1e-5, equal_nan=True)
        assert len(frame["peaks"]["peakXPosRaw"]) > 300
    # The geometry file for the saved files parses, with the monitor's panels.
    geometry = load_crystfel_geometry(str(output / "hits.geom"))
    monitors = load_crystfel_geometry(str(geometry_1m))
    assert set(geometry.detector["panels"]) == set(monitors.detector["panels"])
    text = (output / "hits.geom").read_text()
    for line in ("data = /entry_1/data_1/data", "dim0 = %", "peak_list = /entry_1/result_1",
                 "peak_list_type = cxi"):
        assert line in text
    # Counted saved = listed = in the files, in the broadcast and the final summary.
    assert last["hit_saving"]["frames_saved"] == 40  # all saved, some files still open
    summary = re.search(r"hit saving: (\d+) frames saved in (\d+) files .*?(\d+) listed",
                        monitor.stdout)
    assert summary, monitor.stdout
    assert int(summary.group(1)) == int(summary.group(3)) == len(listed) == 40
    assert int(summary.group(2)) == len(names)


def test_int32_photons_are_the_rounded_frames(tmp_path, real_module_file, real_module,
                                              geometry_1m, real_calibration):
    output = tmp_path / "saved"
    config, broadcast = _configure(tmp_path, geometry_1m, real_calibration, output,
                                   data_type="int32")
    with subscriber(broadcast, b"omdata") as omdata:
        monitor, simulator = _start(tmp_path, config, real_module_file, 10)
        alive = lambda: monitor.popen.poll() is None  # noqa: E731
        try:
            receive_until(omdata, lambda m: m["num_events"] >= 10, 180, alive)
        finally:
            code = monitor.stop()
            simulator.stop()
    assert code == 0, monitor.stderr[-3000:]
    saved = _saved_frames(output)
    assert len(saved) == 10 == len(_listed(output))
    for event_id, frame in saved.items():
        expected = _calibrated(real_module, event_id)
        assert frame["frame"].dtype == np.int32
        good = np.isfinite(expected)
        # Rounded photons; a value within float32 noise of a half may round either way.
        differs = frame["frame"][good] != np.rint(expected[good])
        assert np.all(np.abs(np.abs(expected[good] - np.trunc(expected[good])) - 0.5)[differs]
                      < 1e-4)
        assert np.all(frame["frame"][np.isnan(expected)] == np.iinfo(np.int32).min)
        # Saturated pixels (+inf, issue 21) are the largest int32: above any max_adu.
        assert np.isposinf(expected).any()
        assert np.all(frame["frame"][np.isposinf(expected)] == np.iinfo(np.int32).max)


def _rank_pids(monitor: Process) -> dict[int, int]:
    ranks = {}
    for child in psutil.Process(monitor.popen.pid).children(recursive=True):
        try:
            environ = child.environ()
        except psutil.Error:
            continue
        if "PMI_RANK" in environ:
            ranks[int(environ["PMI_RANK"])] = child.pid
    return ranks


def test_sigterm_mid_run_completes_and_lists_every_file(tmp_path, real_module_file,
                                                        geometry_1m, real_calibration):
    output = tmp_path / "saved"
    config, _ = _configure(tmp_path, geometry_1m, real_calibration, output, frames_per_file=4)
    monitor, simulator = _start(tmp_path, config, real_module_file, 10000)
    try:
        assert eventually(lambda: len(_listed(output)) >= 8
                          or monitor.popen.poll() is not None, 180), monitor.stderr[-3000:]
        code = monitor.stop(signum=signal.SIGTERM)
    finally:
        monitor.stop()
        simulator.stop()
    print(monitor.stdout[-2000:], monitor.stderr[-2000:])
    assert code == 0
    assert not list(output.glob("*.part"))
    saved = _saved_frames(output)
    listed = _listed(output)
    assert sorted(listed) == sorted(frame["where"] for frame in saved.values())
    summary = re.search(r"hit saving: (\d+) frames saved in (\d+) files", monitor.stdout)
    assert summary and int(summary.group(1)) == len(listed) == len(saved)
    events = int(re.search(r"final summary: (\d+) events", monitor.stdout).group(1))
    assert events == len(saved)  # frames: all, every event processed is saved


def test_sigkill_leaves_listed_files_and_a_readable_open_file(tmp_path, real_module_file,
                                                             geometry_1m, real_calibration):
    output = tmp_path / "saved"
    config, _ = _configure(tmp_path, geometry_1m, real_calibration, output,
                           frames_per_file=6, flush_interval=0.2)
    monitor, simulator = _start(tmp_path, config, real_module_file, 10000)
    try:
        assert eventually(lambda: len(_listed(output)) >= 12
                          or monitor.popen.poll() is not None, 180), monitor.stderr[-3000:]
        listed_before = _listed(output)
        ranks = _rank_pids(monitor)
        # Frames in the open files, flushed: at least one whole flush interval after a frame.
        time.sleep(1.0)
        os.kill(ranks[1], signal.SIGKILL)  # a processing rank
        # Whatever the monitor then does (issue 20), end it the hard way too.
        time.sleep(1.0)
        for pid in [*ranks.values(), monitor.popen.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        monitor.popen.wait(20)
    finally:
        simulator.stop()
    listed_after = _listed(output)
    assert listed_after[:len(listed_before)] == listed_before
    for name in {name for name, _ in listed_after}:
        with h5py.File(output / name, "r") as handle:  # complete files open as usual
            frames = handle["/entry_1/data_1/data"]
            indices = [index for listed, index in listed_after if listed == name]
            assert frames.shape[0] == len(indices) and sorted(indices) == list(range(len(indices)))
            assert np.isfinite(frames[-1]).any()
    open_files = list(output.glob("*-r01-*.cxi.part"))
    assert open_files, sorted(os.listdir(output))
    for path in open_files:
        # What the killed rank flushed: readable in SWMR mode (docs/hit_saving.md).
        with h5py.File(path, "r", swmr=True) as handle:
            n_frames = handle["/entry_1/result_1/nPeaks"].shape[0]
            assert n_frames >= 1
            data = handle["/entry_1/data_1/data"]
            assert data.shape[0] >= n_frames
            assert np.isfinite(data[n_frames - 1]).any()
            assert handle["/entry_1/result_1/nPeaks"][n_frames - 1] > 100


def test_a_full_disk_stops_saving_and_the_monitor_goes_on(tmp_path, real_module_file,
                                                          geometry_1m, real_calibration):
    with small_disk(tmp_path / "small_disk", "64m") as output:
        config, broadcast = _configure(tmp_path, geometry_1m, real_calibration, output,
                                       data_type="float32", compression="none")
        with subscriber(broadcast, b"omdata") as omdata:
            monitor, simulator = _start(tmp_path, config, real_module_file, 40)
            alive = lambda: monitor.popen.poll() is None  # noqa: E731
            try:
                data = receive_until(omdata, lambda m: m["num_events"] >= 40, 180, alive)
            finally:
                code = monitor.stop()
                simulator.stop()
        print(monitor.stdout[-3000:], monitor.stderr[-3000:])
        assert code == 0
        assert data["num_events"] == 40  # monitoring went on
        status = data["hit_saving"]
        assert status["errors"] and status["frames_not_saved"] > 0
        assert status["frames_saved"] > 0 and status["files_written"] >= 1
        assert status["frames_saved"] + status["frames_not_saved"] == 40
        # One message per processing rank that stopped, not one per frame.
        messages = re.findall(r"hit_saving_stopped: .*", monitor.stderr)
        assert 1 <= len(messages) <= 2, messages
        assert data["problems"]["hit_saving_stopped"] == len(messages)
        listed = _listed(output)
        saved = _saved_frames(output)
        assert sorted(listed) == sorted(frame["where"] for frame in saved.values())
        assert re.search(r"\d+ frames not saved", monitor.stdout)


@pytest.mark.parametrize("hit_saving, expected", [
    ({"output_directory": "{file}/below"}, "hit_saving/output_directory: .*cannot write there"),
    ({"min_free_disk_space_gb": 1e12}, "below hit_saving/min_free_disk_space_gb"),
])
def test_an_unusable_directory_stops_the_start_with_one_line(tmp_path, geometry_1m,
                                                             real_calibration, hit_saving,
                                                             expected):
    (tmp_path / "a_file").write_text("")
    changes = {key: value.format(file=tmp_path / "a_file") if isinstance(value, str) else value
               for key, value in hit_saving.items()}
    config, _ = _configure(tmp_path, geometry_1m, real_calibration, tmp_path / "saved",
                           **changes)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    code = monitor.wait(120)
    errors = [line for line in monitor.stderr.splitlines() if "error:" in line]
    print(monitor.stderr)
    assert code != 0
    assert len(errors) == 1 and re.search(expected, errors[0]) and str(config) in errors[0]
