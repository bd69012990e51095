# SPDX-License-Identifier: GPL-3.0-or-later
"""The GUIs' network machinery without any window: message checks, Subscriber, RequestClient.

Real ZeroMQ sockets on 127.0.0.1; waits are qtbot.waitUntil with a timeout, never sleeps.
"""

import argparse
import os
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import msgpack
import numpy as np
import pytest
import zmq

from gui_helpers import context, publisher, router  # noqa: F401 (fixtures)
from om.graphical_interfaces import synthetic
from om.graphical_interfaces.common import (
    parse_resolution_list,
    resolution_at_radius,
    resolution_ring_radius,
    robust_levels,
)
from om.graphical_interfaces.subscriber import (
    MalformedMessageError,
    RequestClient,
    Subscriber,
    decode_message,
    resolve_responding_url,
    validate_omdata,
)
from om.lib.serialization import pack


@pytest.fixture
def wait_for(qtbot):
    """``wait_for(condition, action=None, timeout=10)``: qtbot.waitUntil, running ``action``
    (e.g. publishing again, for the slow-joiner SUB socket) before each check."""

    def wait(condition, action=None, timeout=10.0):
        def check():
            if action is not None:
                action()
            assert condition()

        qtbot.waitUntil(check, timeout=int(timeout * 1000))

    return wait


def small_omdata(**changes):
    content = synthetic.make_omdata(1, shape=(64, 80), history_length=20)
    content.update(changes)
    return content


def small_omframedata(**changes):
    content = synthetic.make_omframedata(1, shape=(64, 80), num_peaks=5)
    content.update(changes)
    return content


# -- message checks --------------------------------------------------------------------------


def test_decode_good_messages_normalises_values():
    tag, data = decode_message(synthetic.encode("omdata", small_omdata(beam_center=[1, 2.5])))
    assert tag == "omdata"
    assert data["beam_center"] == (1.0, 2.5)
    assert data["virtual_powder_plot"].shape == (64, 80)
    assert data["virtual_powder_plot"].dtype == np.float32
    tag, data = decode_message(synthetic.encode("omframedata", small_omframedata(frame_is_hit=1)))
    assert tag == "omframedata" and data["frame_is_hit"] is True
    assert data["peak_list_x_in_frame"].shape == (5,)


def test_decode_ignores_unknown_keys():
    _, data = decode_message(synthetic.encode("omdata", small_omdata(new_key_from_the_future=3)))
    assert "new_key_from_the_future" not in data


@pytest.mark.parametrize(
    "parts, kind",
    [
        ([b"omdata"], "wrong_number_of_parts"),
        ([b"omdata", b"x", b"y"], "wrong_number_of_parts"),
        ([b"omdataX", pack({})], "unexpected_tag"),
        ([b"omdata", b"\xc1\xc1 not msgpack"], "bad_payload"),
        ([b"omdata", pack({"type": "<f4", "shape": [10], "data": b"abc"})], "bad_payload"),
        ([b"omdata", pack([1, 2, 3])], "not_a_map"),
        ([b"omdata", pack({k: v for k, v in small_omdata().items() if k != "peakogram"})], "missing_key"),
        ([b"omdata", pack(small_omdata(virtual_powder_plot=np.zeros(10, np.float32)))], "bad_value"),
        ([b"omdata", pack(small_omdata(virtual_powder_plot=np.zeros((2, 2), np.complex64)))], "bad_value"),
        ([b"omdata", pack(small_omdata(virtual_powder_plot={"type": "<f4", "shape": [0, 5], "data": b""}))], "bad_value"),
        ([b"omdata", pack(small_omdata(hit_rate_history=np.zeros(3)))], "bad_value"),
        ([b"omdata", pack(small_omdata(num_events="many"))], "bad_value"),
        ([b"omdata", pack(small_omdata(num_events=True))], "bad_value"),
        ([b"omdata", pack(small_omdata(beam_center=[1.0]))], "bad_value"),
        ([b"omdata", pack(small_omdata(problems={"a": "b"}))], "bad_value"),
        ([b"omdata", pack(small_omdata(responding_url=5))], "bad_value"),
        ([b"omframedata", pack(small_omframedata(peak_list_y_in_frame=np.zeros(4)))], "bad_value"),
        ([b"omframedata", pack(small_omframedata(frame_data=np.zeros((3, 3, 3), np.float32)))], "bad_value"),
        ([b"omframedata", pack(small_omframedata(event_id=7))], "bad_value"),
    ],
)
def test_decode_rejects_malformed_messages(parts, kind):
    with pytest.raises(MalformedMessageError) as raised:
        decode_message(parts)
    assert raised.value.kind == kind


def test_decode_never_unpickles():
    # An ext type or anything pickle-like is just bad msgpack content, never executed.
    payload = msgpack.packb(msgpack.ExtType(1, b"cos\nsystem\n(S'echo hi'\ntR."))
    with pytest.raises(MalformedMessageError):
        decode_message([b"omdata", payload])


# -- subscriber ------------------------------------------------------------------------------


def test_subscriber_keeps_newest_and_counts_malformed(publisher, context, wait_for):
    pub, url = publisher.socket, publisher.url
    subscriber = Subscriber(url, context=context)
    subscriber.start()
    try:
        first = synthetic.encode("omdata", small_omdata(num_events=1))
        wait_for(lambda: subscriber.num_received("omdata") > 0, action=lambda: pub.send_multipart(first))
        assert subscriber.take("omdata").data["num_events"] == 1
        assert subscriber.take("omdata") is None  # taken already

        pub.send_multipart([b"omdata"])
        wait_for(lambda: subscriber.num_malformed == 1)
        assert subscriber.malformed_counts() == {"wrong_number_of_parts": 1}

        for events in (2, 3, 4):
            pub.send_multipart(synthetic.encode("omdata", small_omdata(num_events=events)))
            wait_for(lambda e=events: subscriber.latest("omdata").data["num_events"] == e)
        pub.send_multipart(synthetic.encode("omframedata", small_omframedata(event_id="f")))
        wait_for(lambda: subscriber.latest("omframedata") is not None)
        assert subscriber.take("omdata").data["num_events"] == 4  # only the newest
        assert subscriber.take("omdata") is None
        assert subscriber.take("omframedata").data["event_id"] == "f"
        assert subscriber.seconds_since_last_message() < 5
    finally:
        subscriber.stop()
    assert not subscriber.running


def test_subscriber_reconnects_to_a_restarted_publisher(context, wait_for):
    first = context.socket(zmq.PUB)
    first.setsockopt(zmq.LINGER, 0)
    port = first.bind_to_random_port("tcp://127.0.0.1")
    url = f"tcp://127.0.0.1:{port}"
    second = context.socket(zmq.PUB)
    second.setsockopt(zmq.LINGER, 0)
    subscriber = Subscriber(url, {"omdata": validate_omdata}, context=context)
    subscriber.start()
    try:
        message = synthetic.encode("omdata", small_omdata(num_events=1))
        wait_for(lambda: subscriber.num_received() >= 1, action=lambda: first.send_multipart(message))
        first.close(linger=0)
        restarted = synthetic.encode("omdata", small_omdata(num_events=2))

        def bind_and_publish():
            if not second.last_endpoint:
                try:
                    second.bind(url)
                except zmq.ZMQError:  # the old listener may take a moment to go away
                    return
            second.send_multipart(restarted)

        started = time.monotonic()
        wait_for(lambda: subscriber.latest("omdata").data["num_events"] == 2, action=bind_and_publish)
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"reconnecting took {elapsed:.1f} s"
    finally:
        subscriber.stop()
        first.close(linger=0)
        second.close(linger=0)


def test_subscriber_bad_url_raises():
    with pytest.raises(zmq.ZMQError, match="cannot connect"):
        Subscriber("not a url").start()


# -- requests --------------------------------------------------------------------------------


def test_request_client_ok_error_and_timeout(router, context, wait_for):
    def poll_result(client):
        results = []
        wait_for(lambda: results.append(client.poll()) or results[-1] is not None)
        return results[-1]

    socket, url = router
    client = RequestClient(timeout=0.3, context=context)
    try:
        client.send(url, b"resetplots")
        assert client.busy
        with pytest.raises(RuntimeError):
            client.send(url, b"again")
        wait_for(lambda: socket.poll(0))
        identity, empty, request = socket.recv_multipart()
        assert request == b"resetplots"
        socket.send_multipart([identity, empty, b"ok, plots reset"])
        result = poll_result(client)
        assert result.ok and result.reply == b"ok, plots reset" and "ok, plots reset" in result.text

        client.send(url, b"nonsense")
        wait_for(lambda: socket.poll(0))
        identity_2, empty, _ = socket.recv_multipart()
        assert identity_2 == identity  # the same socket after a reply
        socket.send_multipart([identity, empty, b"error: unknown request"])
        result = poll_result(client)
        assert not result.ok and "error: unknown request" in result.text

        client.send(url, b"resetplots")  # never answered
        wait_for(lambda: socket.poll(0))
        socket.recv_multipart()
        result = poll_result(client)
        assert not result.ok and result.reply is None and "no reply" in result.text

        client.send(url, b"resetplots")  # a fresh socket after the timeout
        wait_for(lambda: socket.poll(0))
        identity_3, empty, request = socket.recv_multipart()
        assert identity_3 != identity and request == b"resetplots"
        socket.send_multipart([identity_3, empty, b"ok"])
        assert poll_result(client).ok
    finally:
        client.close()


def test_request_client_bad_url(context):
    client = RequestClient(context=context)
    client.send("nowhere", b"resetplots")
    result = client.poll()
    assert result is not None and not result.ok and "cannot send" in result.text
    assert not client.busy


def test_resolve_responding_url():
    assert resolve_responding_url("tcp://*:5000", "tcp://monitor:4000") == "tcp://monitor:5000"
    assert resolve_responding_url("tcp://0.0.0.0:5000", "tcp://10.0.0.2:4000") == "tcp://10.0.0.2:5000"
    assert resolve_responding_url("tcp://other:5000", "tcp://monitor:4000") == "tcp://other:5000"
    assert resolve_responding_url("ipc:///tmp/x", "tcp://monitor:4000") == "ipc:///tmp/x"


# -- resolution and levels -------------------------------------------------------------------


def test_resolution_ring_radius_matches_the_formula():
    energy, distance, pixel_size = 9500.0, 120.0, 75e-6
    wavelength = 12398.42 / energy
    for d in (2.0, 3.0, 4.0, 6.0):
        radius = resolution_ring_radius(d, energy, distance, pixel_size)
        two_theta = np.arctan(radius * pixel_size / (distance / 1000))
        assert wavelength / (2 * np.sin(two_theta / 2)) == pytest.approx(d, rel=1e-9)
        assert resolution_at_radius(radius, energy, distance, pixel_size) == pytest.approx(d)
    # 4 Å at 9.5 keV, 120 mm, 75 µm: 2θ = 2 asin(1.3051/8) = 18.78°, r = 120 tan(2θ) / 0.075
    assert resolution_ring_radius(4.0, energy, distance, pixel_size) == pytest.approx(544.0, abs=0.5)
    assert resolution_ring_radius(0.5, energy, distance, pixel_size) is None  # λ > 2d·sin45°
    assert resolution_ring_radius(3.0, 0.0, distance, pixel_size) is None
    assert resolution_ring_radius(3.0, energy, float("nan"), pixel_size) is None
    assert resolution_at_radius(0.0, energy, distance, pixel_size) is None


def test_parse_resolution_list():
    assert parse_resolution_list("2,3,4,6") == (2.0, 3.0, 4.0, 6.0)
    assert parse_resolution_list("2.5 3") == (2.5, 3.0)
    assert parse_resolution_list("") == ()
    with pytest.raises(argparse.ArgumentTypeError):
        parse_resolution_list("2,x")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_resolution_list("2,-1")


def test_robust_levels_ignore_nan_and_zeros():
    image = np.zeros((100, 100), np.float32)
    image[10:20, 10:20] = np.linspace(1, 100, 100).reshape(10, 10)
    image[50, :] = np.nan
    low, high = robust_levels(image, high=99.0, positive_only=True)
    assert low == 0.0 and 90 < high <= 100
    assert robust_levels(np.full((4, 4), np.nan)) == (0.0, 1.0)
    low, high = robust_levels(np.full((4, 4), 7.0))
    assert high > low
