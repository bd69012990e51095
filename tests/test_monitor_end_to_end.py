# SPDX-License-Identifier: GPL-3.0-or-later
"""The whole monitor as users run it: simulator → ``mpiexec -n 3 om_monitor.py`` → subscriber.

Everything runs for real on 127.0.0.1: the simulator's PUB sockets, the MPI ranks, the
collecting rank's PUB socket, the real JUNGFRAU frames and calibration of ``../shared/data``.
"""

import json
import re
import signal
import time

import numpy as np
import psutil
import pytest
import zmq

from om.simulation.jungfrau_stream import JungfrauStreamSender

from helpers import (Process, configure, free_port, monitor_command, receive_until,
                     simulator_command, subscriber)

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("shared_memory", [True, False])
def test_real_frames_end_to_end(tmp_path, real_module_file, geometry_1m, real_calibration,
                                shared_memory):
    """With frames handed over in shared memory (one host) and over TCP (ranks on other
    hosts, or frame_shared_memory: false)."""
    config, broadcast = configure(tmp_path, geometry_1m, *real_calibration,
                                  frame_shared_memory=shared_memory)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    simulator = Process(simulator_command(urls, "--file", str(real_module_file), "--rate", "20",
                                          "--frames", "40"), tmp_path, "simulator")
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    try:
        # A frozen GUI: subscribed to everything, never reading. It must not slow the monitor.
        with subscriber(broadcast, b"") as frozen, subscriber(broadcast, b"omdata") as omdata, \
                subscriber(broadcast, b"omframedata") as omframedata:
            frozen.setsockopt(zmq.RCVHWM, 1)
            alive = lambda: monitor.popen.poll() is None  # noqa: E731
            data = receive_until(omdata, lambda m: m["num_events"] >= 40, 180, alive)
            frame = receive_until(omframedata, lambda m: True, 30, alive)
        simulator.wait(30)
    finally:
        code = monitor.stop()
        simulator.stop()
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    assert data["num_events"] == 40  # every frame once: none lost, none processed twice
    assert data["num_hits"] == 40
    per_rank = data["num_events_per_rank"]
    assert set(per_rank) == {"1", "2"} and sum(per_rank.values()) == 40
    assert min(per_rank.values()) >= 10, per_rank  # both processing ranks take a share
    assert data["problems"].get("frame_dropped_ranks_busy", 0) == 0
    powder = data["virtual_powder_plot"]
    assert powder.dtype == np.float32 and np.count_nonzero(powder) > 1000
    assert data["peakogram"].sum() > 0
    assert data["beam_energy"] == 12400.0 and data["pixel_size"] == pytest.approx(75e-6)
    # Every 1M frame is the real module twice: hundreds of Bragg spots per module.
    per_module = frame["num_peaks"] / 2
    print(f"peaks per module in frame {frame['event_id']}: {per_module}")
    assert 150 <= per_module <= 600  # 167-208 per module in the 20 frames (peakfinder8 tests)
    assert frame["frame_data"].shape == powder.shape
    assert len(frame["peak_list_x_in_frame"]) == frame["num_peaks"]
    summary = re.search(r"final summary: (\d+) events, (\d+) hits", monitor.stdout)
    assert summary and int(summary.group(1)) == 40
    assert f"2 processing ranks connected ({2 if shared_memory else 0} through shared memory)" \
        in monitor.stderr
    assert re.search(r"events/s", monitor.stdout)
    # Where the processing ranks' time went, per event, over the whole run.
    whole_run = re.search(
        r"time per event on the processing ranks, whole run: next_event ([\d.]+), "
        r"data_retrieval ([\d.]+), processing ([\d.]+), sending ([\d.]+) ms", monitor.stdout)
    assert whole_run, monitor.stdout
    assert float(whole_run.group(2)) > 0 and float(whole_run.group(3)) > 0  # calibration, peaks


def _bad_stream_sender(urls):
    """Sends, on real PUB sockets: a wrong-size part, a non-JSON header, frames with gain code
    0b10 pixels, frames of module 0 only, then good frames."""
    sender = JungfrauStreamSender(urls.split(","))
    assert sender.wait_for_subscribers(120)
    module0 = sender._sockets[0]
    good = np.zeros((1024, 1024), dtype=np.uint16) + 1000
    invalid_gain = good.copy()
    invalid_gain[100:110, 100:110] = 0b10 << 14 | 500
    number = 1
    for _ in range(3):
        module0.send_multipart([json.dumps(sender.header(0, number, 0, None)).encode(), b"\0" * 100])
        module0.send_multipart([b"\xff not json", good[:512].tobytes()])
        module0.send_multipart([json.dumps(sender.header(0, number + 1, 0, None)).encode(),
                                good[:512].tobytes()])
        sender.send_frame(invalid_gain, number + 2, 0)
        number += 3
    for _ in range(10):
        sender.send_frame(good, number, 0)
        number += 1
    return sender


def test_bad_input_is_counted_and_the_monitor_goes_on(tmp_path, geometry_1m, real_calibration):
    # A deep queue: the sender does not wait, and no good frame may be dropped for speed.
    config, broadcast = configure(tmp_path, geometry_1m, *real_calibration,
                                   frame_queue_size=64, speed_report_interval=1)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    try:
        with subscriber(broadcast, b"omdata") as omdata:
            sender = _bad_stream_sender(urls)
            # The third module-0-only frame expires after the good frames: wait for it too.
            data = receive_until(omdata, lambda m: m["num_events"] >= 13 and m["problems"].get(
                "incomplete_frame", 0) >= 3, 60,
                                 lambda: monitor.popen.poll() is None)
            sender.close()
    finally:
        started = time.monotonic()
        code = monitor.stop(signum=signal.SIGTERM)
        stop_seconds = time.monotonic() - started
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    counts = data["problems"]
    assert counts["wrong_size"] == 3
    assert counts["bad_header"] == 3
    assert counts["invalid_gain_pixels"] == 3 * 100
    assert counts["incomplete_frame"] == 3
    for kind in ("wrong_size", "bad_header", "invalid_gain_pixels", "incomplete_frame"):
        lines = [line for line in monitor.stderr.splitlines() if f"{kind}:" in line]
        assert 1 <= len(lines) <= 2, (kind, lines)  # rate-limited: one line per kind
    assert data["num_events"] == 13  # 3 frames with invalid pixels + 10 good ones
    assert "final summary: 13 events" in monitor.stdout  # SIGTERM: every rank summed up
    # speed_report_interval 1: each speed report says where the processing ranks' time went.
    assert "om: time per event on the processing ranks: next_event" in monitor.stdout
    print(f"stopped by SIGTERM in {stop_seconds:.1f} s")


@pytest.mark.parametrize("change, source, expected", [
    ({"crystallography": {"data_broadcast_url": "tcp://not a url"}}, None,
     "crystallography/data_broadcast_url: cannot bind the data broadcast socket at "
     "'tcp://not a url'"),
    ({}, "tcp://127.0.0.1:30001,http://detector:30002",
     "source URL 'http://detector:30002' is not a ZeroMQ tcp:// or ipc:// URL"),
    ({}, "tcp://not a host:1,tcp://127.0.0.1:2",
     "cannot connect to the detector stream 'tcp://not a host:1'"),
    ({"data_retrieval_layer": {"detector_dark_filenames": ["missing_0.h5", "missing_1.h5"]}},
     None, "data_retrieval_layer/detector_dark_filenames: no file"),
    ({"crystallography": {"min_num_peaks_for_hits": 3}}, None,
     "crystallography/min_num_peaks_for_hits: unknown key"),
])
def test_start_up_errors_stop_every_rank(tmp_path, geometry_1m, real_calibration, change,
                                         source, expected):
    config, _ = configure(tmp_path, geometry_1m, *real_calibration)
    text = config.read_text()
    from ruamel.yaml import YAML

    yaml = YAML()
    content = yaml.load(text)
    for group, values in change.items():
        content[group].update(values)
    with open(config, "w") as stream:
        yaml.dump(content, stream)
    urls = source or f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    code = monitor.wait(120)
    errors = [line for line in monitor.stderr.splitlines() if "error:" in line]
    print(monitor.stderr)
    assert code != 0
    assert len(errors) == 1 and expected in errors[0]
    if change:  # a configuration error names the file too
        assert str(config) in errors[0]


def _wait_for_ranks(monitor: Process, ranks: int, timeout: float = 60.0) -> None:
    """Waits until mpiexec has started ``ranks`` rank processes (a signal sent before that
    reaches mpiexec alone, which is not what is tested here)."""
    parent = psutil.Process(monitor.popen.pid)
    deadline = time.monotonic() + timeout
    while True:
        started = 0
        for child in parent.children(recursive=True):
            try:
                started += "PMI_RANK" in child.environ()
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                pass
        if started >= ranks:
            return
        assert time.monotonic() < deadline and monitor.popen.poll() is None, monitor.stderr
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [1.0, 3.0])
def test_a_stop_during_start_up_is_clean(tmp_path, geometry_1m, real_calibration, delay):
    """SIGINT while the ranks start (importing om, starting MPI, reading the calibration
    files, compiling) or just after: every rank ends with exit code 0 and a final summary, none
    dies of a KeyboardInterrupt (which would make mpiexec SIGKILL the others). The delays start
    once the rank processes exist; a signal within the interpreter's own start-up (the first
    ~0.1 s) is out of reach of any Python code and is not tested."""
    config, _ = configure(tmp_path, geometry_1m, *real_calibration)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    _wait_for_ranks(monitor, 3)
    time.sleep(delay)
    code = monitor.stop(timeout=60)
    print(monitor.stdout[-2000:], monitor.stderr[-3000:])
    assert code == 0
    assert "KeyboardInterrupt" not in monitor.stderr and "Traceback" not in monitor.stderr
    assert "final summary: 0 events" in monitor.stdout
