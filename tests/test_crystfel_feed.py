# SPDX-License-Identifier: GPL-3.0-or-later
"""Live frames for CrystFEL: clients that read the monitor exactly as indexamajig does.

The facts of indexamajig's reader (CrystFEL 0.12: ``src/im-zmq.c``, ``image-msgpack.c``) are in
``../shared/reference/crystfel_msgpack.md``: one ZeroMQ frame at a time, frames of 15 bytes or
less skipped, a top-level map, the image map's ``type`` ``'<f4'`` or ``'<i4'`` and ``shape``
``[ss, fs]``, the byte length not checked by indexamajig (so checked here), peaks as msgpack
float64 arrays. These clients decode with plain msgpack, not with om's own decoder.
"""

import sys
import time

import msgpack
import numpy as np
import psutil
import pytest
import zmq

from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration
from om.lib.broadcast import DataBroadcaster
from om.lib.crystfel_feed import MAX_WAITING_CLIENTS, CrystfelFrameFeed
from om.lib.problems import problems
from om.lib.responding_socket import MAX_REQUESTS_PER_SERVE, RespondingSocket

from helpers import (Process, configure, eventually, free_port, monitor_command,
                     receive_until, simulator_command, subscriber)

pytestmark = pytest.mark.slow


def read_like_indexamajig(payload: bytes) -> dict:
    """Decodes one frame as indexamajig does; fails on anything indexamajig could not use."""
    message = msgpack.unpackb(payload, raw=False)
    if isinstance(message, list):
        message = message[0]
    assert isinstance(message, dict)
    keys = list(message)
    for key in keys:  # indexamajig matches keys by the found key's length: no prefixes
        assert not any(other != key and other.startswith(key) for other in keys), key
    image = message["detector_data"]
    assert image["type"] in ("<f4", "<i4")
    assert len(image["shape"]) == 2 and all(isinstance(n, int) for n in image["shape"])
    assert isinstance(image["data"], bytes)
    assert len(image["data"]) == image["shape"][0] * image["shape"][1] * 4
    peaks = message["peak_list"]
    assert len(peaks["fs"]) == len(peaks["ss"]) == len(peaks["intensity"])
    for name in ("fs", "ss", "intensity"):
        assert all(type(value) is float for value in peaks[name]), name
    for key in ("beam_energy", "detector_distance"):
        assert isinstance(message[key], float)
    return message


@pytest.fixture
def running_monitor(tmp_path, real_module_file, geometry_1m, real_calibration):
    config, broadcast = configure(tmp_path, geometry_1m, *real_calibration,
                                  responding_url=f"tcp://127.0.0.1:{free_port()}",
                                  crystfel_max_frames_per_second=1000.0)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    simulator = Process(simulator_command(urls, "--file", str(real_module_file), "--rate", "10",
                                          "--frames", "1000"), tmp_path, "simulator")
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    from ruamel.yaml import YAML

    responding = YAML(typ="safe").load(config.read_text())["crystallography"]["responding_url"]
    yield monitor, broadcast, responding
    code = monitor.stop()
    simulator.stop()
    print(monitor.stdout[-3000:], monitor.stderr[-6000:])
    assert code == 0


def test_sub_mode_frames_are_readable_and_match_the_monitor(running_monitor, real_module):
    monitor, broadcast, _ = running_monitor
    alive = lambda: monitor.popen.poll() is None  # noqa: E731
    crystfel = zmq.Context.instance().socket(zmq.SUB)
    crystfel.setsockopt(zmq.SUBSCRIBE, b"ondaframedata")
    crystfel.setsockopt(zmq.LINGER, 0)
    crystfel.connect(broadcast)
    frames: dict[str, dict] = {}
    skipped = 0
    with subscriber(broadcast, b"omframedata") as omframedata:
        reported: dict[str, dict] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and alive() and not (set(frames) & set(reported)):
            if crystfel.poll(100):
                payload = crystfel.recv()  # one ZeroMQ frame at a time, as indexamajig
                if len(payload) <= 15:
                    skipped += 1
                    continue
                message = read_like_indexamajig(payload)
                frames[message["event_id"]] = message
            while omframedata.poll(0):
                frame = receive_until(omframedata, lambda m: True, 5)
                reported[frame["event_id"]] = frame
    crystfel.close(0)
    common = sorted(set(frames) & set(reported))
    assert common, "no frame seen both by the CrystFEL client and as omframedata"
    assert skipped >= len(frames)  # every payload came behind its tag frame
    message, frame = frames[common[0]], reported[common[0]]
    # The same peaks as the monitor reported for that frame.
    assert len(message["peak_list"]["fs"]) == frame["num_peaks"] > 100
    np.testing.assert_allclose(sorted(message["peak_list"]["intensity"]),
                               sorted(frame["peak_list_intensity"]), rtol=1e-6)
    # The image is the calibrated frame in the detector layout: the real module twice.
    image = np.frombuffer(message["detector_data"]["data"], "<f4").reshape(
        message["detector_data"]["shape"])
    assert image.shape == (1024, 1024)
    raw_index = (int(message["event_id"]) - 1) % real_module["raw"].shape[0]
    energy_kev = real_module["photon_energy_eV"] / 1000
    calibration = JungfrauCalibration(
        pedestals=np.stack([real_module["pedestal"]] * 2),
        gains_adu_per_kev=np.stack([real_module["gain_adu_per_photon"]] * 2) / energy_kev,
        photon_energy_kev=energy_kev)
    expected, _ = calibration.calibrate(np.concatenate([real_module["raw"][raw_index]] * 2))
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert message["beam_energy"] == 12400.0 and message["detector_distance"] == 100.0


def test_req_mode_serves_distinct_frames_to_concurrent_clients(running_monitor):
    _, _, responding = running_monitor
    context = zmq.Context.instance()
    quitter = context.socket(zmq.REQ)
    quitter.setsockopt(zmq.LINGER, 0)
    quitter.connect(responding)
    quitter.send(b"next")
    quitter.close(0)  # leaves before its reply: must not stall the others
    clients = []
    for _ in range(2):
        client = context.socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(responding)
        clients.append(client)
    seen: list[list[str]] = [[], []]
    for _ in range(4):
        for index, client in enumerate(clients):  # both requests are pending at once
            client.send(b"next")
        for index, client in enumerate(clients):
            assert client.poll(30000), "no reply to 'next'"
            parts = client.recv_multipart()
            assert len(parts) == 1
            seen[index].append(read_like_indexamajig(parts[0])["event_id"])
    unknown = context.socket(zmq.REQ)
    unknown.setsockopt(zmq.LINGER, 0)
    unknown.connect(responding)
    unknown.send(b"previous")
    assert unknown.poll(10000)
    assert unknown.recv().startswith(b"error")
    for client in (*clients, unknown):
        client.close(0)
    everything = seen[0] + seen[1]
    assert len(set(everything)) == len(everything) == 8, seen


def test_resetplots_request_clears_the_plots(running_monitor):
    monitor, broadcast, responding = running_monitor
    alive = lambda: monitor.popen.poll() is None  # noqa: E731
    with subscriber(broadcast, b"omdata") as omdata:
        before = receive_until(omdata, lambda m: m["num_events"] >= 40, 120, alive)
        client = zmq.Context.instance().socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(responding)
        client.send(b"resetplots")
        assert client.poll(10000)
        assert client.recv().startswith(b"ok")
        client.close(0)
        after = receive_until(omdata, lambda m: m["num_events"] > before["num_events"] + 5, 60,
                              alive)
    # Counters go on; the plots start again from the reset. Every real 1M frame has 344-407
    # peaks: without the reset the peakogram would hold >= 344 * num_events of them.
    since_reset = after["num_events"] - before["num_events"] + 10  # + events before the request
    assert after["num_events"] > before["num_events"]
    assert after["hit_rate_history"].size <= since_reset
    assert 0 < after["peakogram"].sum() <= 407 * since_reset < 344 * after["num_events"]


# Requests from clients that are not indexamajig ------------------------------------------------

def _result(event_id: int) -> dict:
    """A hit as the processing ranks send it (a small frame: the payload is the same)."""
    return {"detector_data": np.full((16, 16), event_id, np.float32), "frame_is_hit": True,
            "peak_fs": [1.0], "peak_ss": [2.0], "peak_intensity": [3.0], "beam_energy": 12400.0,
            "detector_distance": 100.0, "timestamp": 0.0, "event_id": str(event_id)}


@pytest.fixture
def feed():
    """A REQ-mode feed on real sockets: (responding socket, feed)."""
    broadcaster = DataBroadcaster(url="tcp://127.0.0.1:*")
    responder = RespondingSocket(url="tcp://127.0.0.1:*", handlers={})
    crystfel = CrystfelFrameFeed(broadcaster=broadcaster, responding_socket=responder,
                                 frames="hits", interval=1, max_rate=0.0, queue_length=16)
    yield responder, crystfel
    responder.close()
    broadcaster.close()


def _client(responder: RespondingSocket, kind: int = zmq.REQ) -> zmq.Socket:
    client = zmq.Context.instance().socket(kind)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(responder.url)
    return client


def _serve(responder: RespondingSocket, requests: int, timeout: float = 20.0) -> None:
    """Serves until ``requests`` requests were dispatched."""
    served, deadline = 0, time.monotonic() + timeout
    while served < requests:
        assert time.monotonic() < deadline, f"{served} of {requests} requests came"
        served += responder.serve(100)


def _count(kind: str) -> int:
    return problems.counts().get(kind, 0)


def test_a_req_client_gets_its_frame_though_a_dealer_sent_300_next_requests(feed):
    responder, crystfel = feed
    indexamajig = _client(responder)
    flooder = _client(responder, zmq.DEALER)
    try:
        indexamajig.send(b"next")
        _serve(responder, 1)
        before = _count("request_refused")
        for _ in range(300):
            flooder.send_multipart([b"", b"next"])
        _serve(responder, 300)
        crystfel.offer(_result(1))
        assert indexamajig.poll(10000), "indexamajig's request was dropped: no frame"
        assert read_like_indexamajig(indexamajig.recv())["event_id"] == "1"
        # The flooder holds one place; its 299 other requests were refused with an error reply
        # each (as many as fit its reply queue: it does not read them).
        assert _count("request_refused") - before == 299
        assert flooder.poll(10000)
        assert flooder.recv_multipart()[1].startswith(b"error: your previous 'next'")
    finally:
        indexamajig.close(0)
        flooder.close(0)


def test_a_client_that_cannot_wait_gets_an_error_at_once(feed):
    responder, _ = feed
    clients = [_client(responder) for _ in range(MAX_WAITING_CLIENTS + 1)]
    try:
        for client in clients[:-1]:
            client.send(b"next")
        _serve(responder, MAX_WAITING_CLIENTS)
        clients[-1].send(b"next")
        _serve(responder, 1)
        assert clients[-1].poll(10000), "refused silently"
        assert clients[-1].recv().startswith(b"error: too many clients waiting")
    finally:
        for client in clients:
            client.close(0)


def test_one_serve_call_handles_a_bounded_number_of_requests(feed):
    responder, _ = feed
    flooder = _client(responder, zmq.DEALER)
    try:
        for _ in range(3 * MAX_REQUESTS_PER_SERVE):
            flooder.send_multipart([b"", b"resetplots?"])
        deadline = time.monotonic() + 20
        first = 0
        while first == 0:  # the first requests may still be on their way
            assert time.monotonic() < deadline
            first = responder.serve(100)
        assert first <= MAX_REQUESTS_PER_SERVE
        _serve(responder, 3 * MAX_REQUESTS_PER_SERVE - first)  # the others wait their turn
    finally:
        flooder.close(0)


_FLOOD = """
import sys, zmq
socket = zmq.Context().socket(zmq.DEALER)
socket.setsockopt(zmq.RCVHWM, 1)  # it reads no reply: it only takes the monitor's time
socket.connect(sys.argv[1])
socket.send_multipart([b"", b"resetplots"])
assert socket.poll(60000)
socket.recv_multipart()
print("flooding", flush=True)
while True:
    socket.send_multipart([b"", b"resetplots"])
"""


def test_a_resetplots_flood_does_not_stop_the_broadcasts(running_monitor, tmp_path):
    monitor, broadcast, responding = running_monitor
    alive = lambda: monitor.popen.poll() is None  # noqa: E731
    with subscriber(broadcast, b"omdata") as omdata:
        receive_until(omdata, lambda m: m["num_events"] >= 5, 120, alive)
        flooder = Process([sys.executable, "-c", _FLOOD, responding], tmp_path, "flooder")
        try:
            assert eventually(lambda: "flooding" in flooder.stdout, 60), flooder.stderr
            while omdata.poll(0):  # messages from before the flood
                omdata.recv_multipart()
            during = receive_until(omdata, lambda m: True, 60, alive)
            after = receive_until(omdata, lambda m: m["num_events"] >= during["num_events"] + 20,
                                  60, alive)
            assert flooder.popen.poll() is None  # still flooding
        finally:
            flooder.stop()
    assert after["num_events"] >= during["num_events"] + 20


def test_a_request_whose_handling_fails_gets_an_error_and_serving_goes_on():
    def deep(identity):
        raise RecursionError("maximum recursion depth exceeded")
    responder = RespondingSocket(url="tcp://127.0.0.1:*",
                                 handlers={b"deep": deep, b"ping": lambda identity: b"pong"})
    client = _client(responder)
    try:
        before = _count("request_error")
        client.send(b"deep")
        _serve(responder, 1)
        assert client.poll(10000) and client.recv().startswith(b"error")
        assert _count("request_error") == before + 1
        client.send(b"ping")
        _serve(responder, 1)
        assert client.poll(10000) and client.recv() == b"pong"
    finally:
        client.close(0)
        responder.close()


RSS_BOUND_MB = 60  # what 300 frames of 1 MB served to a client that reads none may add


def test_a_client_that_reads_no_reply_holds_few_frames(feed):
    """The responding socket's send limit: a client asking for frames without reading them
    costs the collecting rank a few frames, not 1000 (the default limit: ~4 GB of 1M frames)."""
    responder, crystfel = feed
    hoarder = _client(responder, zmq.DEALER)
    hoarder.setsockopt(zmq.RCVHWM, 1)  # it hurts the monitor, not itself
    try:
        frame = np.zeros((512, 512), np.float32)  # 1 MB
        before = psutil.Process().memory_info().rss / 2**20
        for number in range(300):
            hoarder.send_multipart([b"", b"next"])
            _serve(responder, 1)
            crystfel.offer(_result(number) | {"detector_data": frame + number})
        grown = psutil.Process().memory_info().rss / 2**20 - before
        print(f"RSS {before:.0f} MB before 300 frames of 1 MB to a client reading none, "
              f"+{grown:.1f} MB after; {crystfel.frames_served} served")
        assert grown < RSS_BOUND_MB
        assert crystfel.frames_served < 300 and _count("client_gone") > 0
    finally:
        hoarder.close(0)
