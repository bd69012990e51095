# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzzing (hypothesis) every decoder directly, and over real ZeroMQ on 127.0.0.1 every receiving
socket of the sources and the collecting rank's two listening sockets (frame dealing, responding),
with random and crafted messages (the cases of issue 17 among them).

After each case's bad messages a good one is sent and must be processed; every bad message must
be counted; the process's RSS (psutil) must stay within :data:`RSS_BOUND` of its value before
the test. Hypothesis runs derandomized, :data:`EXAMPLES` cases per test, no deadline (the
machine may be busy): the suite is reproducible in CI. Every wait is bounded.
"""

import json
import os
import threading
import time

import cbor2
import msgpack
import numpy as np
import psutil
import pytest
import zmq
from helpers import configure_stream, follow_mode_handler, free_port, monitor_parameters
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from om.data_retrieval_layer.cbor_stream_v2 import StreamV2Error, decode_message, parse_image
from om.data_retrieval_layer.data_event_handler_dectris_stream import DectrisStreamMessages
from om.data_retrieval_layer.data_event_handler_streaming_receiver import (
    StreamingReceiverMessages,
)
from om.data_retrieval_layer.data_retrieval_dectris_stream import DectrisStreamDataRetrieval
from om.data_retrieval_layer.data_retrieval_streaming_receiver import (
    StreamingReceiverDataRetrieval,
)
from om.data_retrieval_layer.frame_distribution import FrameReceiver, new_secret
from om.data_retrieval_layer.jungfrau_frame_assembler import JungfrauFrameAssembler
from om.graphical_interfaces.subscriber import Subscriber
from om.lib.bslz4 import compress_bslz4, decompress_bslz4
from om.lib.exceptions import OmInvalidDataError
from om.lib.input_limits import parse_json_object
from om.lib.problems import problems
from om.lib.serialization import pack, unpack
from om.simulation import dectris_stream_sender as dectris
from om.simulation import streaming_receiver_sender as receiver
from om.simulation.jungfrau_stream import JungfrauStreamSender
from om.simulation.nxmx_writer import gaussian_spot_images, write_nxmx

EXAMPLES = 50
"""Cases per fuzz test."""
RSS_BOUND = 200 * 1024 * 1024
MAX_NOTIFICATION = 64 * 1024  # the notifications socket's ZMQ_MAXMSGSIZE
"""The most a fuzz test's cases may add to the process's RSS, bytes."""

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# Crafted values: the hostile ones of issue 17 and the edges of every range.
HOSTILE_NUMBERS = st.sampled_from([10**400, -(10**400), 2**64, 2**64 - 1, 2**63, -(2**63) - 1,
                                   0, -1, 1e308, 1e400, float("nan"), True])
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HOSTILE_NUMBERS,
                         st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
CRAFTED_JSON = st.sampled_from([b"[" * 60000, b"{" * 20000, b"[" * 70000, b"\xff\xfe",
                                b'{"a": 1e999999}', b"1" * 5000, b"{}", b"null"])


def _json_bytes(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _json_objects(keys: list[str], hostile=JSON_VALUES):
    """JSON objects with some of ``keys`` (any values) and random other keys."""
    return st.builds(lambda known, other: {**other, **known},
                     st.dictionaries(st.sampled_from(keys), hostile, max_size=len(keys)),
                     st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))


def _first_parts(keys: list[str]):
    return st.one_of(st.binary(max_size=64), CRAFTED_JSON,
                     _json_objects(keys).map(_json_bytes))


class _Budget:
    """The RSS bound and the case count of one fuzz test (printed for the report)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases = 0
        self.start = time.monotonic()
        self.rss = psutil.Process().memory_info().rss

    def case(self) -> None:
        self.cases += 1
        growth = psutil.Process().memory_info().rss - self.rss
        assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.0f} MB"

    def report(self) -> None:
        growth = (psutil.Process().memory_info().rss - self.rss) / 2**20
        print(f"\nfuzz {self.name}: {self.cases} cases in {time.monotonic() - self.start:.1f} s,"
              f" RSS {growth:+.0f} MB")


def _problem_total(kinds=None) -> int:
    counts = problems.counts()
    return sum(count for kind, count in counts.items() if kinds is None or kind in kinds)


# Decoders, directly ---------------------------------------------------------------------------

def test_fuzz_json_headers():
    budget = _Budget("JSON headers")

    @FUZZ
    @given(st.one_of(st.binary(max_size=200), CRAFTED_JSON, JSON_VALUES.map(_json_bytes)))
    def run(data):
        ignored: list[str] = []
        try:
            value = parse_json_object(data, "header", ignored=ignored)
        except OmInvalidDataError:
            budget.case()
            return
        assert isinstance(value, dict)
        unpack(pack(value))  # whatever is accepted can travel on as msgpack
        budget.case()

    run()
    budget.report()


def test_fuzz_msgpack():
    budget = _Budget("msgpack")
    crafted = st.sampled_from([
        b"\xdd" + (1 << 22).to_bytes(4, "big") + b"\x80" * (1 << 22),  # 4 MB of empty maps
        b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\x91" * 100000,
        msgpack.packb({"type": "<f4", "shape": [2**62, 2**62], "data": b""}),
        msgpack.packb({"type": "O", "shape": [1], "data": b"x" * 8}),
        msgpack.packb({"type": "<u2", "shape": [-2, -2], "data": b"x" * 8})])

    @FUZZ
    @given(st.one_of(st.binary(max_size=200), crafted))
    def run(data):
        try:
            unpack(data)
        except OmInvalidDataError:
            pass
        budget.case()

    run()
    budget.report()


def test_fuzz_bslz4():
    budget = _Budget("bslz4")
    good = compress_bslz4(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))

    @FUZZ
    @given(st.binary(max_size=64), st.integers(0, len(good)), st.integers(0, 2**64 - 1),
           st.integers(0, 2**32 - 1), st.sampled_from([(64, 64), (8192, 8192), (1, 7)]))
    def run(noise, cut, total, block, shape):
        for blob in (noise, good[:cut] + noise, total.to_bytes(8, "big") + block.to_bytes(4, "big")
                     + noise):
            try:
                image = decompress_bslz4(blob, np.uint16, shape)
                assert image.shape == shape
            except OmInvalidDataError:
                pass
        budget.case()

    run()
    budget.report()


def test_fuzz_dectris_decoder():
    budget = _Budget("DECTRIS decoder")
    image = dectris.synthetic_frame(0, (128, 128))[0]
    good = dict(cbor2.loads(dectris.image_message(1, "u", 0, image)))
    keys = list(good) + ["incident_energy", "spots", "start_time", "series_date"]

    @FUZZ
    @given(st.one_of(st.binary(max_size=100),
                     st.dictionaries(st.sampled_from(keys), JSON_VALUES, max_size=6).map(
                         lambda changes: cbor2.dumps({**good, **changes}))))
    def run(data):
        try:
            parse_image(decode_message(data))
        except StreamV2Error:
            pass
        budget.case()

    run()
    budget.report()


def test_fuzz_stream_message_handlers():
    """The streaming-receiver and DECTRIS per-rank decoders: nothing raises, every message
    that is dropped is counted, and a good image after the bad ones gives its event."""
    budget = _Budget("stream decoders")
    sr_state, dectris_state = StreamingReceiverMessages(), DectrisStreamMessages()
    image = receiver.synthetic_image(0, (128, 128))[0]
    frame = dectris.synthetic_frame(0, (128, 128))[0]
    keys = ["htype", "msg_number", "frame", "shape", "type", "compression", "filename",
            "timestamp"]

    @FUZZ
    @given(st.lists(st.lists(_first_parts(keys), min_size=0, max_size=3), max_size=4),
           st.lists(st.binary(max_size=80), max_size=4))
    def run(sr_messages, dectris_messages):
        before = _problem_total()
        dropped = sr_state.counts["dropped"] + dectris_state.counts["dropped"]
        for parts in sr_messages:
            sr_state.handle(parts, 0.0)
        for data in dectris_messages:
            dectris_state.handle(data, 0.0)
        new_drops = sr_state.counts["dropped"] + dectris_state.counts["dropped"] - dropped
        assert _problem_total() - before >= new_drops
        assert sr_state.handle(receiver.image_message(10**6, 0, image), 0.0) is not None
        assert dectris_state.handle(dectris.image_message(1, "u", 0, frame), 0.0) is not None
        budget.case()

    run()
    budget.report()


# Receiving sockets over real ZeroMQ -----------------------------------------------------------

def test_fuzz_jungfrau_module_streams():
    """Random module messages on the module SUB sockets: each is counted (bad_header,
    wrong_size or bad_message), and a good frame after them is assembled and dealt."""
    budget = _Budget("JUNGFRAU module streams")
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    secret = new_secret()
    assembler = JungfrauFrameAssembler(stream_urls=sender.urls, distribution_host="127.0.0.1",
                                       rows_per_stream=512, assembly_timeout=0.3,
                                       expected_receivers=1, secret=secret)
    assembler.start()
    frames = FrameReceiver(assembler.endpoint, n_slots=4, slot_bytes=2 * 512 * 1024 * 2,
                           secret=secret)
    keys = ["frameNumber", "timestamp", "bitmode", "completeImage", "data", "modId"]
    counted = {"bad_header", "wrong_size", "bad_message"}
    number = [10**6]
    try:
        assert sender.wait_for_subscribers(10.0)

        @FUZZ
        @given(st.lists(st.tuples(st.integers(0, 1), _first_parts(keys),
                                  st.binary(max_size=100)), min_size=1, max_size=5))
        def run(messages):
            before = _problem_total(counted)
            for module, header, body in messages:
                sender._sockets[module].send_multipart([header, body])
            number[0] += 1
            sender.send_frame(np.zeros((1024, 1024), np.uint16), number[0], 1)
            frame = frames.receive(5000)
            assert frame is not None and frame.metadata["frame_number"] == number[0]
            frames.release(frame)
            # Every bad message was counted once (the good frame came after them).
            assert _problem_total(counted) - before == len(messages)
            budget.case()

        run()
    finally:
        frames.close()
        assembler.stop()
        sender.close()
    budget.report()


def _pull_handler(tmp_path, retrieval_class, name, sender):
    config, _ = configure_stream(tmp_path, name)
    parameters = monitor_parameters(config, retrieval_class)
    handler = retrieval_class(parameters=parameters, source=sender.url).get_data_event_handler()
    handler.initialize_event_handling_on_processing_node(node_rank=1, node_pool_size=2)
    return handler


@pytest.mark.parametrize("source", ["streaming-receiver", "dectris"])
def test_fuzz_pull_streams(tmp_path, source):
    """Random messages on a processing rank's PULL socket: every one is counted as received,
    those dropped as problems too, and a good image after them gives its event."""
    budget = _Budget(f"{source} PULL socket")
    if source == "dectris":
        sender = dectris.DectrisStreamSender(f"tcp://127.0.0.1:{free_port()}")
        handler = _pull_handler(tmp_path, DectrisStreamDataRetrieval,
                                "DectrisStreamDataRetrieval", sender)
        frame = dectris.synthetic_frame(0, (128, 128))[0]
        good = lambda n: dectris.image_message(1, "u", n, frame)  # noqa: E731
        messages = st.lists(st.binary(max_size=100), min_size=1, max_size=4)
    else:
        sender = receiver.StreamingReceiverSender(f"tcp://127.0.0.1:{free_port()}")
        handler = _pull_handler(tmp_path, StreamingReceiverDataRetrieval,
                                "StreamingReceiverDataRetrieval", sender)
        image = receiver.synthetic_image(0, (128, 128))[0]
        good = lambda n: receiver.image_message(n, n, image)  # noqa: E731
        keys = ["htype", "msg_number", "frame", "shape", "type", "compression", "filename"]
        messages = st.lists(st.lists(_first_parts(keys), min_size=1, max_size=3), min_size=1,
                            max_size=4)
    watchdog = threading.Timer(120, handler.stop)  # bounds the test if an image never comes
    watchdog.start()
    events = handler.event_generator(node_rank=1, node_pool_size=2)
    number = [0]
    try:
        assert sender.wait_for_clients(1, 30)

        @FUZZ
        @given(messages)
        def run(bad):
            counts = handler._messages.counts if handler._messages else None
            received, dropped = (counts["messages"], counts["dropped"]) if counts else (0, 0)
            before = _problem_total()
            for message in bad:
                sender.send(message)
            number[0] += 1
            sender.send(good(number[0]))
            event = next(events)
            counts = handler._messages.counts
            assert counts["messages"] - received == len(bad) + 1
            assert _problem_total() - before >= counts["dropped"] - dropped
            handler.close_event(event=event)
            budget.case()

        run()
    finally:
        watchdog.cancel()
        handler.stop()
        events.close()
        sender.close()
    budget.report()


def test_fuzz_file_notifications(tmp_path):
    """Random notifications on the follow-mode SUB socket: none ends the rank's events, every
    one that names no file of the folder is counted, and a good one after them is read."""
    budget = _Budget("file notifications SUB socket")
    writer_dir = tmp_path / "writer"
    writer_dir.mkdir()
    images, _ = gaussian_spot_images(1, (32, 32), n_spots=2, seed=4, min_radius=5,
                                     max_radius=10)
    good = write_nxmx(writer_dir, "good", images, images_per_file=1).master
    handler, publisher = follow_mode_handler(tmp_path, writer_dir)
    watchdog = threading.Timer(120, handler.stop)
    watchdog.start()
    events = handler.event_generator(node_rank=1, node_pool_size=2)
    notification = json.dumps({"filename": good.name}).encode()
    keys = ["filename", "file_number", "incident_energy_eV", "detector_distance_m"]
    hostile_names = st.sampled_from(["/etc/passwd", "../../x.h5", "..", "", "a\0b",
                                     str(good), "missing.h5", "/" * 3000])

    def next_event_resending():
        """The next event, the good notification sent every 0.2 s until it comes: PUB/SUB
        loses what is sent before the subscription arrives, or while a connection dropped
        for an oversized message is made again."""
        got = threading.Event()

        def resend():
            while not got.is_set() and not handler._stop.is_set():
                publisher.send(notification)
                got.wait(0.2)

        thread = threading.Thread(target=resend)
        thread.start()
        try:
            return next(events)
        finally:
            got.set()
            thread.join(10)
            while handler._sockets and handler._sockets[0].poll(300):  # extra copies
                next(events)

    try:
        next_event_resending()

        @FUZZ
        @given(st.lists(st.one_of(
            st.binary(max_size=60), CRAFTED_JSON,
            _json_objects(keys).map(_json_bytes),
            hostile_names.map(lambda name: _json_bytes({"filename": name})),
        ), min_size=1, max_size=4))
        def run(bad):
            before = problems.counts()
            for message in bad:
                publisher.send(message)
            event = next_event_resending()
            assert event["event_id"].startswith(str(good))
            after = problems.counts()
            new = sum(after.values()) - sum(before.values())
            # Every message up to the first oversized one is counted unless it names the good
            # file; an oversized one drops the connection (counted once; what PUB sends
            # until it is made again is lost, by PUB/SUB's design).
            sizes = [len(message) > MAX_NOTIFICATION for message in bad]
            received = bad[:sizes.index(True)] if any(sizes) else bad
            expected = sum(1 for message in received if not _names_good(message, good))
            if any(sizes):
                # An event may have come from a copy sent before the drop was noticed: take
                # events until the connection has been made again (bounded).
                for _ in range(20):
                    if problems.counts().get("stream_disconnected", 0) > before.get(
                            "stream_disconnected", 0):
                        break
                    next_event_resending()
                after = problems.counts()
                new = sum(after.values()) - sum(before.values())
                assert after.get("stream_disconnected", 0) > before.get("stream_disconnected", 0)
                expected += 1
            assert new >= expected
            budget.case()

        run()
    finally:
        watchdog.cancel()
        handler.stop()
        events.close()
        publisher.close(0)
    budget.report()


def _names_good(message: bytes, good) -> bool:
    """Whether a notification names the good file (relative to its folder, or absolute)."""
    try:
        value = json.loads(message)
    except (ValueError, RecursionError):
        return False
    name = value.get("filename") if isinstance(value, dict) else None
    return (isinstance(name, str) and "\0" not in name
            and os.path.realpath(os.path.join(good.parent, name)) == os.path.realpath(good))


def test_fuzz_gui_subscriber():
    """Random payloads on a GUI's SUB socket: each counted as malformed, the good one after
    them taken."""
    budget = _Budget("GUI subscriber SUB socket")
    url = f"tcp://127.0.0.1:{free_port()}"
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.setsockopt(zmq.SNDHWM, 0)
    publisher.bind(url)

    def validate(payload):
        if not isinstance(payload, dict) or payload.get("fuzz_ok") is not True:
            raise ValueError("not the good message")
        return {"n": int(payload["n"])}

    subscriber = Subscriber(url, {"omfuzz": validate}, receive_hwm=1000)
    subscriber.start()
    crafted = st.sampled_from([b"\xdd" + (1 << 22).to_bytes(4, "big") + b"\x80" * (1 << 22),
                               b"\x91" * 10000, b""])
    sent = [0]

    def wait_for(n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = subscriber.latest("omfuzz")
            if message is not None and message.data["n"] >= n:
                return True
            time.sleep(0.01)
        return False

    try:
        connected = False
        for _ in range(100):  # PUB/SUB: until the subscription has arrived
            sent[0] += 1
            publisher.send_multipart([b"omfuzz", msgpack.packb({"fuzz_ok": True, "n": sent[0]})])
            if wait_for(sent[0], 0.1):
                connected = True
                break
        assert connected

        @FUZZ
        @given(st.lists(st.one_of(st.binary(max_size=60), crafted,
                                  JSON_VALUES.map(lambda v: msgpack.packb(
                                      v, use_bin_type=True) if _packable(v) else b"\xc1")),
                        min_size=1, max_size=4))
        def run(bad):
            before = subscriber.num_malformed
            for payload in bad:
                publisher.send_multipart([b"omfuzz", payload])
            sent[0] += 1
            publisher.send_multipart([b"omfuzz", msgpack.packb({"fuzz_ok": True, "n": sent[0]})])
            assert wait_for(sent[0])
            assert subscriber.num_malformed - before == len(bad)
            budget.case()

        run()
    finally:
        subscriber.stop()
        publisher.close(0)
    budget.report()


def _packable(value) -> bool:
    try:
        msgpack.packb(value)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


# The collecting rank's listening sockets (issue 17 part A) ------------------------------------

HELLO_KEYS = ["secret", "slots", "slot_bytes", "token", "path", "host", "shared_memory"]


def _msgpack_or_json(value) -> bytes:
    """msgpack bytes of a value, or its JSON where msgpack cannot hold it (10**400...)."""
    try:
        return msgpack.packb(value)
    except (TypeError, OverflowError, ValueError):
        return _json_bytes(value)


def _hello_parts():
    """Multipart messages to the frame-dealing ROUTER: hellos of every shape, frees, junk."""
    hello = st.one_of(st.binary(max_size=64), _json_objects(HELLO_KEYS).map(_msgpack_or_json))
    kind = st.sampled_from([b"hello", b"free", b"", b"x" * 40])
    return st.lists(st.one_of(st.tuples(kind, hello).map(list),
                              st.lists(st.binary(max_size=32), min_size=1, max_size=4)),
                    min_size=1, max_size=4)


def test_fuzz_frame_dealing_socket():
    """Random hellos and frees on the frame-dealing ROUTER from a rogue DEALER: none registers
    or touches a file, every one is counted, and the real rank still gets each next frame."""
    from om.data_retrieval_layer.frame_distribution import FrameDealer

    budget = _Budget("frame-dealing ROUTER")
    secret = new_secret()
    dealer = FrameDealer("127.0.0.1", secret=secret)
    receiver = FrameReceiver(dealer.endpoint, n_slots=1, slot_bytes=2 * 512 * 1024 * 2,
                             secret=secret)
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(dealer.endpoint)
    number = [0]

    def pump(condition, what):
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            if dealer.socket.poll(100):
                dealer.handle_messages()

    def image(value):
        return np.full((512, 1024), value % 60000, "<u2").tobytes()

    try:
        pump(lambda: dealer.receivers == 1, "the real rank never said hello")

        @FUZZ
        @given(_hello_parts())
        def run(messages):
            before = _problem_total()
            for parts in messages:
                rogue.send_multipart(parts)
            pump(lambda: _problem_total() - before >= len(messages),
                 f"not every bad message was counted: {problems.counts()}")
            assert dealer.receivers == 1  # the rogue never registered
            number[0] += 1
            assert dealer.deal({"frame_number": number[0]}, [image(number[0])] * 2)
            frame = receiver.receive(10000)
            assert frame is not None and frame.metadata["frame_number"] == number[0]
            receiver.release(frame)
            pump(lambda: sum(len(r.free) for r in dealer._receivers.values()) == 1,
                 "the slot never came back")
            budget.case()

        run()
    finally:
        rogue.close(0)
        receiver.close()
        dealer.close()
    budget.report()


def test_fuzz_responding_socket():
    """Random requests on the responding ROUTER from rogue REQ, DEALER and ROUTER-less
    clients: every one is counted or answered, and a real REQ client is still answered."""
    from om.lib.responding_socket import RespondingSocket

    budget = _Budget("responding ROUTER")
    responder = RespondingSocket(url=f"tcp://127.0.0.1:{free_port()}",
                                 handlers={b"resetplots": lambda identity: b"ok"})
    context = zmq.Context.instance()
    rogue = context.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(responder.url)
    client = context.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(responder.url)

    try:
        @FUZZ
        @given(st.lists(st.lists(st.one_of(st.binary(max_size=64), st.just(b""),
                                           st.sampled_from([b"next", b"resetplots"])),
                                 min_size=1, max_size=3), min_size=1, max_size=6))
        def run(messages):
            before = _problem_total()
            for parts in messages:
                rogue.send_multipart(parts)
            client.send(b"resetplots")
            # Every rogue message but a well-formed "resetplots" is a counted problem.
            expected = sum(1 for parts in messages if parts != [b"", b"resetplots"])
            answered = None
            deadline = time.monotonic() + 30
            while answered is None or _problem_total() - before < expected:
                assert time.monotonic() < deadline, (
                    f"answered {answered!r}, {_problem_total() - before} of {expected} counted")
                responder.serve(100)
                if answered is None and client.poll(0):
                    answered = client.recv()
            assert answered == b"ok"
            while rogue.poll(0):  # replies to the rogue's requests: not read by anyone else
                rogue.recv_multipart()
            budget.case()

        run()
    finally:
        rogue.close(0)
        client.close(0)
        responder.close()
    budget.report()
