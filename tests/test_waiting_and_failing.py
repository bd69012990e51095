# SPDX-License-Identifier: GPL-3.0-or-later
"""The monitor says what it waits for (nothing, some modules, unusable messages), and a source
whose every event fails stops it with one error and exit code 1: real ZeroMQ on 127.0.0.1, a
real ``mpiexec`` job and real HDF5 files."""

import logging
import re
import subprocess

import pytest
import zmq
from ruamel.yaml import YAML

from om.data_retrieval_layer.frame_distribution import new_secret
from om.data_retrieval_layer.jungfrau_frame_assembler import JungfrauFrameAssembler
from om.lib.package_data import packaged_file
from om.simulation.jungfrau_frames import SyntheticJungfrau
from om.simulation.jungfrau_stream import JungfrauStreamSender

from helpers import (Process, configure_single_panel, configure_stream, eventually, free_port,
                     monitor_command)
from helpers import simulator_mode_command

_FRAME = SyntheticJungfrau(n_modules=2, seed=0).raw_frame(0)[0]


def _assembler(urls):
    assembler = JungfrauFrameAssembler(
        stream_urls=urls, distribution_host="127.0.0.1", rows_per_stream=512,
        assembly_timeout=0.2, expected_receivers=0, waiting_report_interval=0.3,
        secret=new_secret())
    assembler.start()
    return assembler


def _said(caplog, text):
    return any(text in record.getMessage() for record in caplog.records)


def test_waiting_for_nothing_then_for_the_missing_module(caplog):
    caplog.set_level(logging.WARNING, logger="om")
    silent = f"tcp://127.0.0.1:{free_port()}"
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", f"tcp://127.0.0.1:{free_port()}"])
    # The monitor listens to the sender's module 0 and to a port where nothing is sent.
    assembler = _assembler([sender.urls[0], silent])
    try:
        assert eventually(lambda: _said(caplog, "received nothing on any stream"), 20)
        assert _said(caplog, f"waiting for data from {sender.urls[0]}, {silent}")
        number = iter(range(1, 1_000_000))

        def module_images_only():
            sender.send_frame(_FRAME, next(number), 0)
            return _said(caplog, f"nothing from {silent}, so every frame is incomplete")
        assert eventually(module_images_only, 20)
        line = next(r.getMessage() for r in caplog.records if "some streams only" in r.getMessage())
        assert f"({sender.urls[0]} " in line and f"{silent} 0)" in line
    finally:
        assembler.stop()
        sender.close()


def test_waiting_with_only_unusable_messages(caplog):
    caplog.set_level(logging.WARNING, logger="om")
    context = zmq.Context.instance()
    publishers = [context.socket(zmq.PUB) for _ in range(2)]
    urls = []
    for publisher in publishers:
        publisher.setsockopt(zmq.LINGER, 0)
        publisher.bind("tcp://127.0.0.1:*")
        urls.append(publisher.getsockopt(zmq.LAST_ENDPOINT).decode())
    assembler = _assembler(urls)
    try:
        def garbage_only():
            for publisher in publishers:
                publisher.send_multipart([b"not JSON", b"\0" * 16])
            return _said(caplog, "received only messages it cannot use (bad_header")
        assert eventually(garbage_only, 20)
    finally:
        assembler.stop()
        for publisher in publishers:
            publisher.close(0)


@pytest.mark.slow
@pytest.mark.parametrize("limit, expected", [
    (3, "processing rank [12]: its last 3 events all failed"),
    (20, "processing rank [12]: all its 5 events failed"),
])
def test_a_geometry_that_fits_no_frame_stops_the_monitor(tmp_path, limit, expected):
    """512x512 images with the JUNGFRAU 1M geometry: every event fails. With a limit below a
    rank's 5 images the rank stops after ``limit`` in a row; above it, at the end of its
    images. Either way one error line and exit code 1, not a silent '0 events' and 0."""
    writer = subprocess.run(simulator_mode_command(
        "files", str(tmp_path / "data"), "lyso", "--images", "10"),
        check=False, capture_output=True, text=True, timeout=120)
    assert writer.returncode == 0, writer.stderr
    config, _, _ = configure_single_panel(
        tmp_path, "Hdf5FilesDataRetrieval",
        {"fallback_beam_energy_in_eV": 9000.0, "fallback_detector_distance_in_mm": 250.0},
        {"geometry_file": str(packaged_file("jungfrau1M.geom"))})
    yaml = YAML()
    content = yaml.load(config.read_text())
    content["om"]["max_consecutive_failed_events"] = limit
    with open(config, "w") as stream:
        yaml.dump(content, stream)
    monitor = Process(monitor_command(str(tmp_path / "data" / "lyso_master.h5"), config),
                      tmp_path, "monitor")
    try:
        code = monitor.wait(120)
    finally:
        monitor.stop()
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 1
    errors = [line for line in monitor.stderr.splitlines()
              if line.startswith("om_monitor.py: error:")]
    assert len(errors) == 1, errors
    assert re.search(expected, errors[0]), errors[0]
    assert "does not match the geometry's" in errors[0]
    assert "final summary: 0 events" in monitor.stdout


def test_frames_dropped_while_stopping_are_not_counted_as_busy_ranks():
    from om.lib.problems import ProblemCounter

    counter = ProblemCounter()
    counter.report("frame_dropped_ranks_busy", "frame 1 dropped")
    counter.rename_from_now({"frame_dropped_ranks_busy": "frame_dropped_at_stop"})
    counter.report("frame_dropped_ranks_busy", "frame 2 dropped")
    counter.merge({"frame_dropped_ranks_busy": 2, "incomplete_frame": 1})
    assert counter.counts() == {"frame_dropped_ranks_busy": 1, "frame_dropped_at_stop": 3,
                                "incomplete_frame": 1}


@pytest.mark.slow
@pytest.mark.parametrize("source, expected", [
    ("StreamingReceiverDataRetrieval", "received nothing (a wrong host or port"),
    ("Hdf5FilesDataRetrieval", "received no file notification"),
])
def test_a_source_that_sends_nothing_is_reported_by_one_rank(tmp_path, source, expected):
    """A streaming-receiver URL, or a file-notification URL (follow mode), nobody binds: the
    first processing rank (only it) says what it waits for; Ctrl-C still stops the monitor
    cleanly."""
    url = f"tcp://127.0.0.1:{free_port()}"
    if source == "Hdf5FilesDataRetrieval":
        config, _, _ = configure_single_panel(
            tmp_path, source, {"fallback_beam_energy_in_eV": 9000.0,
                               "fallback_detector_distance_in_mm": 250.0}, {})
    else:
        config, _ = configure_stream(tmp_path, source)
    monitor = Process(monitor_command(url, config), tmp_path, "monitor")
    try:
        line = f"WARNING: waiting for data from {url}: nothing usable for"
        assert eventually(lambda: line in monitor.stderr or monitor.popen.poll() is not None,
                          120), monitor.stderr
    finally:
        code = monitor.stop()
    print(monitor.stdout, monitor.stderr[-3000:])
    waiting = [entry for entry in monitor.stderr.splitlines() if line in entry]
    assert waiting and all(entry.startswith("om[1] ") for entry in waiting), waiting
    assert expected in waiting[0]
    assert code == 0 and "final summary: 0 events" in monitor.stdout


def test_waiting_lines_come_less_often_and_start_again_after_data(caplog):
    """Lines at 5, 10, 20, 40, 80 s, then every 60 s; after data, 5 s again (a clock the test
    sets, so nothing depends on the machine's speed)."""
    from om.lib.waiting_report import WaitingReport

    caplog.set_level(logging.WARNING, logger="om")
    now = [0.0]
    report = WaitingReport("tcp://x:1", lambda: "received nothing", clock=lambda: now[0])
    lines = []
    for second in range(1, 201):
        now[0] = float(second)
        if report.poll():
            lines.append(second)
    assert lines == [5, 10, 20, 40, 80, 140, 200]
    assert "waiting for data from tcp://x:1: nothing usable for 200 s; received nothing" in \
        caplog.records[-1].getMessage()
    report.data_arrived()
    now[0] = 204.0
    assert not report.poll()
    now[0] = 205.0
    assert report.poll()
