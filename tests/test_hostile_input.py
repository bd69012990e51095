# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile input (issue 17, findings 2, 3, 4, 6, 7, 8): each finding as it was reproduced, on
real ZeroMQ sockets on 127.0.0.1 (and ``mpiexec`` for the collecting rank), checking that the
thread or rank lives and goes on with good messages, that the counts are right, and that the
memory a message can cost stays under a stated bound (peak RSS of a child process that decodes
it, read with psutil and ``getrusage``)."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import cbor2
import msgpack
import numpy as np
import pytest
import zmq
from helpers import (
    configure_stream,
    counts_during,
    eventually,
    follow_mode_handler,
    free_port,
    monitor_parameters,
    run_monitor_on_sent,
)

from om.data_retrieval_layer.data_event_handler_dectris_stream import DectrisStreamMessages
from om.data_retrieval_layer.data_event_handler_streaming_receiver import (
    StreamingReceiverMessages,
)
from om.data_retrieval_layer.data_retrieval_streaming_receiver import (
    StreamingReceiverDataRetrieval,
)
from om.data_retrieval_layer.frame_assembler_process import FrameAssemblerProcess
from om.data_retrieval_layer.frame_distribution import FrameReceiver, new_secret
from om.data_retrieval_layer.jungfrau_frame_assembler import JungfrauFrameAssembler
from om.lib.problems import ProblemCounter, problems
from om.lib.serialization import pack, unpack
from om.simulation import dectris_stream_sender as dectris
from om.simulation import streaming_receiver_sender as receiver
from om.simulation.jungfrau_stream import JungfrauStreamSender
from om.simulation.nxmx_writer import gaussian_spot_images, write_nxmx

INT64_MAX = 2**63 - 1
SECRET = new_secret()
MB = 1024 * 1024


@pytest.fixture
def isolated_problems():
    """Restores the process-wide problem counts after a test that saturates some of them (the
    other tests count differences)."""
    with problems._lock:
        saved = dict(problems._counts), dict(problems._unsent)
    yield
    with problems._lock:
        problems._counts, problems._unsent = saved


def _peak_rss_growth(setup: str, action: str) -> int:
    """Runs ``setup`` then ``action`` in a fresh Python process; returns how far the process's
    peak RSS rose above its RSS just before ``action`` (bytes): psutil's RSS before, the
    kernel's high-water mark (VmHWM, reset just before) after. ``action`` may raise."""
    code = "\n".join([
        "import psutil",
        setup,
        # Resets the kernel's peak RSS (VmHWM) of this process to its current RSS (getrusage's
        # maximum would still hold the parent's peak: it survives exec).
        "open('/proc/self/clear_refs', 'w').write('5')",
        "before = psutil.Process().memory_info().rss",
        "try:",
        textwrap.indent(action, "    "),
        "except Exception as error:",
        "    print('raised', type(error).__name__, str(error)[:200])",
        "status = open('/proc/self/status').read()",
        "peak = int(status.split('VmHWM:')[1].split()[0]) * 1024",
        "print('growth', max(0, peak - before))"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    print(done.stdout.strip())
    return int(done.stdout.split("growth")[-1])


# Finding 2: one malformed slsReceiver header must not stop frame assembly ---------------------

def _jungfrau_settings(urls):
    return {"stream_urls": urls, "distribution_host": "127.0.0.1", "rows_per_stream": 512,
            "assembly_timeout": 0.3, "expected_receivers": 1}


@pytest.fixture(params=["thread", "process"])
def jungfrau(request):
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    settings = _jungfrau_settings(sender.urls)
    assembler = (JungfrauFrameAssembler(**settings, secret=SECRET) if request.param == "thread"
                 else FrameAssemblerProcess(assembler=settings, secret=SECRET))
    assembler.start()
    frames = FrameReceiver(assembler.endpoint, n_slots=8, slot_bytes=2 * 512 * 1024 * 2,
                           secret=SECRET)
    assert sender.wait_for_subscribers(10.0)
    yield sender, frames
    frames.close()
    assembler.stop()
    sender.close()


def _next_frame(frames, timeout_ms=5000):
    frame = frames.receive(timeout_ms)
    if frame is None:
        return None
    metadata = frame.metadata
    frames.release(frame)
    return metadata


def _module_image(value):
    return np.full((512, 1024), value, dtype=np.uint16).tobytes()


@pytest.mark.parametrize("case, expected_kind", [
    ("deeply nested", "bad_header"),  # b"[" * 60000: RecursionError in json.loads
    ("integer beyond 64 bits", "bad_header_field"),  # TypeError when the dealer re-packs it
    ("timestamp 10**400", "bad_header_field"),  # OverflowError turning ticks into seconds
])
def test_a_malformed_module_header_is_counted_and_frames_go_on(jungfrau, case, expected_kind):
    sender, frames = jungfrau
    module0, module1 = sender._sockets
    header = json.dumps(sender.header(0, 5, 0, None)).encode()
    before = problems.counts().get(expected_kind, 0)
    if case == "deeply nested":
        module0.send_multipart([b"[" * 60000, _module_image(0)])
    elif case == "integer beyond 64 bits":
        module0.send_multipart([header[:-1] + b', "extra": ' + str(2**64).encode() + b"}",
                                _module_image(0)])
        module1.send_multipart([json.dumps(sender.header(1, 5, 0, None)).encode(),
                                _module_image(1)])
    else:
        bad = json.loads(header) | {"timestamp": 10**400}
        module0.send_multipart([json.dumps(bad).encode(), _module_image(0)])
        module1.send_multipart([json.dumps(sender.header(1, 5, 0, None)).encode(),
                                _module_image(1)])
    for number in (6, 7):
        sender.send_frame(np.zeros((1024, 1024), np.uint16), number, timestamp_ticks=number)
    received = [_next_frame(frames) for _ in range(3 if case != "deeply nested" else 2)]
    numbers = [metadata["frame_number"] if metadata else None for metadata in received]
    # The frame with the ignored field is kept, and the good frames after it come.
    assert numbers == ([5, 6, 7] if case != "deeply nested" else [6, 7])
    if case == "integer beyond 64 bits":
        assert received[0]["headers"][0]["extra"] is None
    assert eventually(lambda: problems.counts().get(expected_kind, 0) == before + 1, 5)


class _FailingLoopAssembler(JungfrauFrameAssembler):
    """An assembler whose every turn fails (a bug, not input): stands for whatever may still
    end the thread."""

    def _expire(self, now):
        raise RuntimeError("a bug in the loop")


def test_a_thread_that_ends_anyway_stops_the_monitor(isolated_problems):
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    reasons = []
    assembler = _FailingLoopAssembler(**_jungfrau_settings(sender.urls) | {
        "expected_receivers": 0}, secret=SECRET, on_failure=reasons.append)
    before = problems.counts()
    assembler.start()
    try:
        assert eventually(lambda: assembler.failed, 60)  # after 100 failed turns of 50 ms
    finally:
        assembler.stop()
        sender.close()
    after = problems.counts()
    assert after.get("assembler_thread_ended", 0) - before.get("assembler_thread_ended", 0) == 1
    assert reasons == ["RuntimeError: a bug in the loop"]


def test_an_assembler_process_that_ends_by_itself_is_reported_to_stop_the_monitor():
    ended = threading.Event()
    assembler = FrameAssemblerProcess(
        assembler=_jungfrau_settings(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]),
        secret=SECRET, on_unexpected_end=lambda reason: ended.set())
    assembler.start()
    try:
        os.kill(assembler.pid, 9)
        assert ended.wait(10)
    finally:
        assembler.stop()


# Finding 3: counts taken from input must not crash the collecting rank ------------------------

def test_frame_number_gaps_of_2_64_saturate_and_the_counts_still_pack(jungfrau, isolated_problems):
    sender, frames = jungfrau
    numbers = [0, 2**64 - 1, 0, 2**64 - 1, 1, 2]
    received = []
    for number in numbers:  # one at a time: the same number twice in one batch is a duplicate
        sender.send_frame(np.zeros((1024, 1024), np.uint16), number, timestamp_ticks=1)
        received.append(_next_frame(frames))
    assert [m["frame_number"] if m else None for m in received] == numbers
    assert eventually(lambda: problems.counts().get("missed_module_images") == INT64_MAX, 5)
    assert unpack(pack(problems.counts()))["missed_module_images"] == INT64_MAX


def test_merged_counts_saturate():
    counter = ProblemCounter()
    counter.report("gap", "x", count=2**64 - 2)
    counter.merge({"gap": 2**64 - 1, "other": 3, 5: 1, "bad": "7"})
    counts = counter.counts()
    assert counts["gap"] == INT64_MAX and counts["other"] == 3
    assert counts["bad_problem_count"] == 2
    assert unpack(pack(counter.take_unsent()))["gap"] == INT64_MAX


@pytest.mark.slow
def test_message_number_gaps_of_2_64_do_not_stop_the_collecting_rank(tmp_path):
    """msg_numbers 0, 2**64-1, 0, 2**64-1 (each to both processing ranks, ZeroMQ dealing them
    in turn), then good images: the monitor processes them all, the gap count is saturated,
    and it exits cleanly on SIGTERM."""
    config, broadcast = configure_stream(tmp_path, "StreamingReceiverDataRetrieval")
    sender = receiver.StreamingReceiverSender(f"tcp://127.0.0.1:{free_port()}")
    shape = (512, 512)
    numbers = [0, 0, 2**64 - 1, 2**64 - 1, 0, 0, 2**64 - 1, 2**64 - 1]
    good = 6

    def send():
        for frame, number in enumerate(numbers):
            sender.send(receiver.image_message(number, frame,
                                               receiver.synthetic_image(frame, shape)[0]))
        sender.send(receiver.header_message(0, "good.h5", receiver.detector_metadata()))
        for frame in range(good):
            sender.send(receiver.image_message(frame + 1, frame,
                                               receiver.synthetic_image(frame, shape)[0]))

    total = len(numbers) + good
    data, monitor = run_monitor_on_sent(
        tmp_path, config, broadcast, sender, send,
        lambda m: m["num_events"] >= total and m["problems"].get("msg_number_gap", 0) > 0)
    assert data["num_events"] == total
    assert data["problems"]["msg_number_gap"] == INT64_MAX
    assert "processing_error" not in data["problems"]


# Finding 4: a malformed file notification must not end a rank, nor lead out of its folder ------

def test_notifications_that_are_deep_or_lead_out_of_the_folder(tmp_path):
    images, _ = gaussian_spot_images(2, (32, 32), n_spots=2, seed=4, min_radius=5, max_radius=10)
    writer_dir = tmp_path / "writer"
    writer_dir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_nxmx(outside, "secret", images, images_per_file=2).master
    (writer_dir / "link_out.h5").symlink_to(secret)
    good = write_nxmx(writer_dir, "good", images, images_per_file=2).master
    handler, publisher = follow_mode_handler(tmp_path, writer_dir)
    bad = [b"[" * 60000,  # RecursionError in json.loads
           json.dumps({"filename": str(secret)}).encode(),  # absolute, outside
           json.dumps({"filename": f"../outside/{secret.name}"}).encode(),
           json.dumps({"filename": "link_out.h5"}).encode(),  # a link out of the folder
           json.dumps({"filename": good.name, "incident_energy_eV": 10**400}).encode()]
    watchdog = threading.Timer(60, handler.stop)  # bounds the test if no image comes
    watchdog.start()
    event_ids = []

    def publish():  # until the rank's SUB socket is connected: the last one is good
        while not handler._stop.is_set() and not event_ids:
            for message in bad:
                publisher.send(message)
            stop_waiting.wait(0.5)

    stop_waiting = threading.Event()
    thread = threading.Thread(target=publish)
    before = problems.counts()
    thread.start()
    try:
        for event in handler.event_generator(node_rank=1, node_pool_size=2):
            event_ids.append(event["event_id"])
            handler.close_event(event=event)
            if len(event_ids) == 2:
                break
    finally:
        stop_waiting.set()
        watchdog.cancel()
        handler.stop()
        thread.join(10)
        publisher.close(0)
    assert all(event_id.startswith(str(writer_dir / "good")) for event_id in event_ids)
    assert len(event_ids) == 2
    after = problems.counts()
    new = {kind: after[kind] - before.get(kind, 0) for kind in after
           if after[kind] != before.get(kind, 0)}
    rounds = new.get("bad_notification", 0) // 2  # the deep one and the big integer, per round
    assert rounds >= 1
    assert new.get("notified_path_outside_folder", 0) == 3 * rounds


# Finding 6: message sizes ---------------------------------------------------------------------

def test_an_oversized_message_never_reaches_the_decoder(tmp_path):
    config, _ = configure_stream(tmp_path, "StreamingReceiverDataRetrieval",
                                 {"stream_max_message_mb": 1})
    parameters = monitor_parameters(config, StreamingReceiverDataRetrieval)
    sender = receiver.StreamingReceiverSender(f"tcp://127.0.0.1:{free_port()}")
    handler = StreamingReceiverDataRetrieval(parameters=parameters,
                                             source=sender.url).get_data_event_handler()
    handler.initialize_event_handling_on_processing_node(node_rank=1, node_pool_size=2)
    assert handler._socket.getsockopt(zmq.MAXMSGSIZE) == MB
    image = receiver.synthetic_image(0, (128, 128))[0]
    watchdog = threading.Timer(60, handler.stop)
    watchdog.start()
    stop_sending = threading.Event()

    def send():
        sender.send([b"{" + b" " * (2 * MB) + b"}"])  # 2 MiB: the connection is dropped
        frame = 0
        while not stop_sending.is_set():  # the PULL socket connects again by itself
            sender.send(receiver.image_message(frame + 1, frame, image))
            frame += 1
            stop_sending.wait(0.2)

    before = problems.counts().get("stream_disconnected", 0)
    try:
        assert sender.wait_for_clients(1, 30)
        thread = threading.Thread(target=send)
        thread.start()
        event = next(handler.event_generator(node_rank=1, node_pool_size=2))
    finally:
        stop_sending.set()
        watchdog.cancel()
        handler.stop()
        thread.join(10)
        sender.close()
    assert event["image"].shape == (128, 128)
    # The 2 MiB message was never received, so never decoded: no bad_json, not a message;
    # the connection libzmq dropped for it was counted and made again.
    assert handler._messages.counts["dropped"] == 0
    assert problems.counts().get("stream_disconnected", 0) == before + 1


def test_an_oversized_module_image_ends_its_connection_and_frames_go_on(jungfrau):
    """A 5 MB part (the cap: 4 module images) on a module stream: libzmq drops that
    connection before allocating the part; it is counted and made again, and frames follow."""
    sender, frames = jungfrau
    before = problems.counts()
    header = json.dumps(sender.header(0, 1, 0, None)).encode()
    sender._sockets[0].send_multipart([header, b"\0" * (5 * MB)])
    number, received = 2, None
    while received is None and number < 40:  # the SUB connects again within ~0.1 s
        sender.send_frame(np.zeros((1024, 1024), np.uint16), number, timestamp_ticks=number)
        received = _next_frame(frames, timeout_ms=500)
        number += 1
    assert received is not None
    after = problems.counts()
    assert after.get("stream_disconnected", 0) - before.get("stream_disconnected", 0) == 1
    assert after.get("wrong_size", 0) == before.get("wrong_size", 0)  # never received


def test_the_other_receiving_sockets_have_a_size_limit(tmp_path):
    from om.graphical_interfaces.subscriber import Subscriber

    subscriber = Subscriber("tcp://127.0.0.1:1")
    assert subscriber._max_message_bytes == (1 << 26) * 4 + MB
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    assembler = JungfrauFrameAssembler(**_jungfrau_settings(sender.urls), secret=SECRET)
    try:
        assert all(socket.getsockopt(zmq.MAXMSGSIZE) == 4 * MB
                   for socket in assembler._subscribers)
    finally:
        assembler.close()
        sender.close()


_EMPTY_MAPS = "payload = b'\\xdd' + (4 * 1024 * 1024).to_bytes(4, 'big') + b'\\x80' * (4 * 1024 * 1024)"


def test_4_mb_of_empty_msgpack_maps_cost_less_than_32_mb():
    growth = _peak_rss_growth(f"from om.lib.serialization import unpack\n{_EMPTY_MAPS}",
                              "unpack(payload)")
    assert growth < 32 * MB, growth / MB


def test_a_subscriber_counts_a_msgpack_bomb_and_takes_the_next_message():
    from om.graphical_interfaces.subscriber import Subscriber

    url = f"tcp://127.0.0.1:{free_port()}"
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.bind(url)
    bomb = b"\xdd" + (1 << 22).to_bytes(4, "big") + b"\x80" * (1 << 22)
    subscriber = Subscriber(url, {"omtest": lambda payload: {"value": payload["value"]}})
    subscriber.start()
    try:
        sent = 0

        def published():
            nonlocal sent
            publisher.send_multipart([b"omtest", bomb])
            publisher.send_multipart([b"omtest", msgpack.packb({"value": sent})])
            sent += 1
            return subscriber.num_received("omtest") > 0 and subscriber.num_malformed >= 1
        # Until a bomb has been counted and a good message after it taken (ZeroMQ may drop
        # some of either while the subscription is on its way or the queue is full).
        assert eventually(published, 20)
    finally:
        subscriber.stop()
        publisher.close(0)


# Finding 7: bslz4 sizes are checked before anything is allocated --------------------------------

def test_a_12_byte_bslz4_blob_declaring_64_mb_costs_less_than_8_mb():
    setup = ("import struct, numpy as np\n"
             "from om.lib.bslz4 import decompress_bslz4\n"
             "blob = struct.pack('>QI', 8192 * 8192, 8)")
    growth = _peak_rss_growth(setup, "decompress_bslz4(blob, np.uint8, (8192, 8192))")
    assert growth < 8 * MB, growth / MB


def test_a_tiny_bslz4_blob_declaring_a_huge_image_is_counted_over_zeromq(tmp_path):
    sender = receiver.StreamingReceiverSender(f"tcp://127.0.0.1:{free_port()}")
    parameters = monitor_parameters(configure_stream(tmp_path, "StreamingReceiverDataRetrieval")[0],
                                    StreamingReceiverDataRetrieval)
    handler = StreamingReceiverDataRetrieval(parameters=parameters,
                                             source=sender.url).get_data_event_handler()
    handler.initialize_event_handling_on_processing_node(node_rank=1, node_pool_size=2)
    header = {"htype": "image", "msg_number": 1, "frame": 0, "shape": [8192, 8192],
              "type": "uint8", "compression": "bslz4"}
    image = receiver.synthetic_image(1, (128, 128))[0]
    watchdog = threading.Timer(60, handler.stop)
    watchdog.start()
    try:
        assert sender.wait_for_clients(1, 30)
        before = problems.counts().get("bad_compressed_data", 0)
        sender.send([json.dumps(header).encode(), (8192 * 8192).to_bytes(8, "big")
                     + (8).to_bytes(4, "big")])
        sender.send(receiver.image_message(2, 1, image))
        event = next(handler.event_generator(node_rank=1, node_pool_size=2))
    finally:
        watchdog.cancel()
        handler.stop()
        sender.close()
    assert event["frame"] == 1
    assert problems.counts().get("bad_compressed_data", 0) == before + 1


# Finding 8: an unusable optional value is ignored, never the whole message ----------------------

@pytest.mark.parametrize("metadata, energy", [
    ({"photon_energy": 12000.0, "detector_distance": 0.2, "x": 10**400}, 12000.0),
    ({"photon_energy": 10**400, "detector_distance": 0.2}, None),
])
def test_a_header_with_a_huge_number_starts_its_series(metadata, energy):
    state = StreamingReceiverMessages()
    image = receiver.synthetic_image(0, (128, 128))[0]
    state.handle(receiver.header_message(0, "first.h5", receiver.detector_metadata()), 0.0)
    assert state.handle(receiver.image_message(1, 0, image), 0.0)["filename"] == "first.h5"
    state.handle(receiver.series_end_message(2), 0.0)
    header = [json.dumps({"htype": "header", "msg_number": 0, "filename": "second.h5"}).encode(),
              json.dumps(metadata).encode()]
    _, counts = counts_during(lambda: state.handle(header, 0.0))
    assert counts == {"bad_header_metadata": 1}
    event = state.handle(receiver.image_message(1, 0, image), 0.0)
    assert event["filename"] == "second.h5" and event["beam_energy"] == energy
    assert event["detector_distance"] == pytest.approx(200.0)
    assert state.counts["dropped"] == 0


def test_dectris_start_and_image_with_a_huge_optional_number_are_kept():
    state = DectrisStreamMessages()
    start = dict(cbor2.loads(dectris.start_message(3, "u", image_shape=(128, 128),
                                                   number_of_images=1)))
    start["incident_energy"] = 10**400
    image = dectris.synthetic_frame(0, (128, 128))[0]
    message = dict(cbor2.loads(dectris.image_message(3, "u", 0, image)))
    message["spots"] = [{"x": 1.0, "y": 2.0, "I": 10**400}]
    (_, event), counts = counts_during(lambda: (state.handle(cbor2.dumps(start), 0.0),
                                                state.handle(cbor2.dumps(message), 0.0)))
    assert counts == {"bad_stream_metadata": 2}
    assert state.counts["starts"] == 1 and state.counts["dropped"] == 0
    assert event["start"] is not None and event["beam_energy"] is None
    assert event["detector_distance"] == pytest.approx(100.0) and event["spots"] is None
