# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_simulator.py``: its help names every mode, and each mode, run as a real process, sends
its format over real ZeroMQ sockets on 127.0.0.1 (or writes its files).

The receivers here are written from the published formats (the project's reference notes on
slsReceiver's stream, MAX IV's streaming-receiver, DECTRIS Stream V2 / Jungfraujoch and the
NXmx writer) with pyzmq, json, cbor2, bitshuffle and h5py alone: they share no code with the
monitor's Data Event Handlers, so they check the simulator against the formats.
"""

import json
import struct
import subprocess
import time

import bitshuffle
import cbor2
import h5py
import numpy as np
import pytest
import zmq
from helpers import Process, free_port, simulator_mode_command

MODES = {"jungfrau": "--urls", "streaming-receiver": "--thresholds",
         "dectris-stream": "--jungfraujoch-spots", "files": "--notify"}
"""Each mode and an option only its own --help shows."""
FRAMES = 3


def _socket(kind: int, url: str, subscribe: bool = False) -> zmq.Socket:
    socket = zmq.Context.instance().socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    if subscribe:
        socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(url)
    return socket


def _receive(sockets: list[zmq.Socket], count: int, timeout: float = 60.0,
             ) -> list[tuple[int, list[bytes]]]:
    """Receives ``count`` multipart messages from any of ``sockets``: (socket index, parts)."""
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    received: list[tuple[int, list[bytes]]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        for socket, _ in poller.poll(200):
            received.append((sockets.index(socket), socket.recv_multipart()))
    assert len(received) == count, f"{len(received)} of {count} messages in {timeout} s"
    return received


def _bslz4(blob: bytes, shape: list[int], dtype: str) -> np.ndarray:
    """The array of an HDF5-filter-32008 chunk: >Q bytes, >I block bytes, bitshuffle/LZ4."""
    nbytes, block_bytes = struct.unpack(">QI", blob[:12])
    itemsize = np.dtype(dtype).itemsize
    # Checked first: bitshuffle trusts its arguments.
    assert nbytes == int(np.prod(shape)) * itemsize and block_bytes % itemsize == 0
    return bitshuffle.decompress_lz4(np.frombuffer(blob, np.uint8, offset=12), tuple(shape),
                                     np.dtype(dtype), block_bytes // itemsize)



def _finish(process: Process) -> None:
    try:
        code = process.wait(60)
    finally:
        process.stop()
    assert code == 0, (process.stdout, process.stderr)


def _pull_series(mode: str, tmp_path, *options: str) -> list[list[bytes]]:
    """Runs a PUSH mode sending ``FRAMES`` images as fast as it can and pulls its series (the
    first message, the images, the last one) as this process's one client."""
    url = f"tcp://127.0.0.1:{free_port()}"
    pull = _socket(zmq.PULL, url)
    sender = Process(simulator_mode_command(mode, "--url", url, "--frames", str(FRAMES),
                                            "--rate", "0", "--wait-timeout", "60", *options),
                     tmp_path, "sender")
    try:
        messages = [parts for _, parts in _receive([pull], FRAMES + 2)]
        _finish(sender)
    finally:
        pull.close()
    return messages


def test_help_names_the_modes():
    result = subprocess.run(simulator_mode_command("--help"), check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for mode in MODES:
        assert [line for line in result.stdout.splitlines()
                if line.strip().startswith(f"{mode} ")], mode  # one line each


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_shows_its_own_options(mode):
    result = subprocess.run(simulator_mode_command(mode, "--help"), check=False, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert MODES[mode] in result.stdout


def test_an_unknown_mode_is_a_usage_error():
    result = subprocess.run(simulator_mode_command("pilatus"), check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_jungfrau_mode_sends_slsreceiver_messages(tmp_path):
    urls = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    streams = [_socket(zmq.SUB, url, subscribe=True) for url in urls]
    simulator = Process(simulator_mode_command(
        "jungfrau", "--urls", ",".join(urls), "--frames", str(FRAMES), "--rate", "0",
        "--pool", "2", "--wait-for-subscribers", "60"), tmp_path, "simulator")
    try:
        received = _receive(streams, 2 * (FRAMES + 1))
        _finish(simulator)
    finally:
        for stream in streams:
            stream.close()
    for module in (0, 1):
        messages = [parts for index, parts in received if index == module]
        headers = [json.loads(parts[0]) for parts in messages]
        assert [len(parts) for parts in messages] == [2] * FRAMES + [1]
        assert [h["data"] for h in headers] == [1] * FRAMES + [0]  # then end of acquisition
        for header, parts in zip(headers[:FRAMES], messages):
            columns, rows = header["shape"]
            assert (rows, columns) == (512, 1024) and header["bitmode"] == 16
            assert len(parts[1]) == header["size"] == rows * columns * 2
            assert header["modId"] == module and header["detshape"] == [1, 2]
        assert [h["frameIndex"] for h in headers[:FRAMES]] == list(range(FRAMES))
    numbers = [[json.loads(parts[0])["frameNumber"] for index, parts in received
                if index == module][:FRAMES] for module in (0, 1)]
    assert numbers[0] == numbers[1]  # the key that matches the modules of one frame


def test_streaming_receiver_mode_sends_header_images_series_end(tmp_path):
    messages = _pull_series("streaming-receiver", tmp_path, "--compression", "bslz4",
                            "--dtype", "uint16", "--shape", "128x192", "--photon-energy", "9000")
    headers = [json.loads(parts[0]) for parts in messages]
    assert [h["htype"] for h in headers] == ["header"] + ["image"] * FRAMES + ["series_end"]
    assert [h["msg_number"] for h in headers] == list(range(FRAMES + 2))
    assert json.loads(messages[0][1])["photon_energy"] == 9000.0
    for header, parts in zip(headers[1:-1], messages[1:-1]):
        assert header["shape"] == [128, 192] and header["type"] == "uint16"
        assert header["compression"] == "bslz4" and len(parts) == 2
        image = _bslz4(parts[1], header["shape"], header["type"])
        assert image.shape == (128, 192) and image.max() > image.mean()
    assert [h["frame"] for h in headers[1:-1]] == list(range(FRAMES))


def test_dectris_stream_mode_sends_start_images_end(tmp_path):
    messages = [cbor2.loads(parts[0]) for parts in _pull_series(
        "dectris-stream", tmp_path, "--compression", "bslz4", "--shape", "160x128",
        "--series-id", "7", "--jungfraujoch-spots")]
    assert [m["type"] for m in messages] == ["start"] + ["image"] * FRAMES + ["end"]
    assert {m["series_id"] for m in messages} == {7}
    assert len({m["series_unique_id"] for m in messages}) == 1
    start = messages[0]
    assert (start["image_size_y"], start["image_size_x"]) == (160, 128)
    assert start["number_of_images"] == FRAMES
    for image_id, message in enumerate(messages[1:-1]):
        assert message["image_id"] == image_id and message["spots"]
        array = message["data"]["default"]  # tag 40: [shape, typed array]
        assert array.tag == 40 and list(array.value[0]) == [160, 128]
        typed = array.value[1]
        assert typed.tag == 69  # uint16, little-endian (RFC 8746)
        algorithm, itemsize, blob = typed.value.value  # tag 56500
        assert typed.value.tag == 56500 and (algorithm, itemsize) == ("bslz4", 2)
        image = _bslz4(blob, [160, 128], "<u2")
        assert image.max() > image.mean()


def test_files_mode_writes_nxmx_and_announces_each_data_file(tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    sub = _socket(zmq.SUB, url, subscribe=True)
    directory = tmp_path / "writer"
    try:
        # The writer waits for this subscriber, so no notification is lost.
        writer = subprocess.run(simulator_mode_command(
            "files", str(directory), "run", "--images", "4", "--images-per-file", "2",
            "--shape", "128", "128", "--spots", "5", "--notify", url, "--wait-subscribers", "1",
            "--subscriber-timeout", "60"), check=False, capture_output=True, text=True, timeout=120)
        assert writer.returncode == 0, writer.stderr
        notifications = [json.loads(parts[0]) for _, parts in _receive([sub], 2, 30)]
    finally:
        sub.close()
    assert [(n["filename"], n["nimages"], n["file_number"]) for n in notifications] == [
        ("run_data_000001.h5", 2, 0), ("run_data_000002.h5", 2, 1)]
    with h5py.File(directory / "run_master.h5", "r") as master:
        definition = master["/entry/definition"][()]
        assert (definition.decode() if isinstance(definition, bytes) else definition) == "NXmx"
        for number in (1, 2):
            assert master[f"/entry/data/data_{number:06d}"].shape == (2, 128, 128)
    for number, first in ((1, 1), (2, 3)):
        with h5py.File(directory / f"run_data_{number:06d}.h5", "r") as data_file:
            data = data_file["/entry/data/data"]
            assert data.shape == (2, 128, 128)
            assert (data.attrs["image_nr_low"], data.attrs["image_nr_high"]) == (first,
                                                                                first + 1)
