# SPDX-License-Identifier: GPL-3.0-or-later
"""The broadcast socket knows which tags its subscribers want (real ZeroMQ on 127.0.0.1)."""


import numpy as np
import pytest
import zmq

from helpers import eventually

from om.lib import broadcast
from om.lib.broadcast import DataBroadcaster
from om.lib.crystfel_feed import SUB_MODE_TAG, CrystfelFrameFeed
from om.lib.serialization import unpack

_TIMEOUT = 10.0


@pytest.fixture
def broadcaster():
    sender = DataBroadcaster(url="tcp://127.0.0.1:*")
    yield sender
    sender.close(0)


def _subscriber(url: str, *prefixes: bytes) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    for prefix in prefixes:
        socket.setsockopt(zmq.SUBSCRIBE, prefix)
    socket.connect(url)
    return socket


def _prefixes(broadcaster: DataBroadcaster) -> set[bytes]:
    """The subscribed prefixes the broadcaster knows of, once it has read its socket."""
    broadcaster.wants("")
    return broadcaster._prefixes


def test_no_tag_is_wanted_without_subscribers(broadcaster):
    assert not broadcaster.wants("omdata")
    assert not broadcaster.wants("omframedata")


def test_a_tag_is_wanted_while_a_subscriber_of_a_prefix_is_connected(broadcaster):
    gui = _subscriber(broadcaster.url, b"omdata")
    assert eventually(lambda: broadcaster.wants("omdata"))
    assert not broadcaster.wants("omframedata")
    assert not broadcaster.wants("ondaframedata")
    everything = _subscriber(broadcaster.url, b"")
    assert eventually(lambda: broadcaster.wants("ondaframedata"))
    everything.close()
    assert eventually(lambda: not broadcaster.wants("ondaframedata"))
    assert broadcaster.wants("omdata")  # the first subscriber is still there
    gui.close()
    assert eventually(lambda: not broadcaster.wants("omdata"))


def test_a_subscriber_receives_what_it_subscribed_to(broadcaster):
    gui = _subscriber(broadcaster.url, b"omdata")
    assert eventually(lambda: broadcaster.wants("omdata"))
    broadcaster.send("omframedata", {"frame_data": np.ones((2, 2), dtype=np.float32)})
    broadcaster.send("omdata", {"num_events": 7})
    assert gui.poll(int(_TIMEOUT * 1000))
    tag, payload = gui.recv_multipart()
    assert tag == b"omdata" and unpack(payload) == {"num_events": 7}
    gui.close()


def test_too_many_subscriptions_count_as_wanting_everything(broadcaster):
    # A misbehaving peer: the broadcaster keeps a bounded set and then answers "wanted".
    flood = _subscriber(broadcaster.url,
                        *(f"x{index}".encode() for index in range(broadcast._MAX_SUBSCRIPTIONS)))
    assert eventually(lambda: len(_prefixes(broadcaster)) == broadcast._MAX_SUBSCRIPTIONS)
    assert not broadcaster.wants("omdata")
    flood.setsockopt(zmq.SUBSCRIBE, b"one more")
    assert eventually(lambda: broadcaster.wants("omdata"))
    assert len(_prefixes(broadcaster)) == broadcast._MAX_SUBSCRIPTIONS
    flood.close()


def test_other_messages_from_a_peer_are_ignored(broadcaster):
    peer = zmq.Context.instance().socket(zmq.XSUB)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(broadcaster.url)
    peer.send(b"\x07not a subscription")
    peer.send(b"")
    peer.send(b"\x01omdata")
    assert eventually(lambda: broadcaster.wants("omdata"))
    assert _prefixes(broadcaster) == {b"omdata"}
    peer.close()


def test_the_crystfel_feed_builds_frames_only_for_a_subscribed_indexamajig(broadcaster):
    feed = CrystfelFrameFeed(broadcaster=broadcaster, responding_socket=None, frames="hits",
                             interval=1, max_rate=1000.0, queue_length=4)
    result = {"detector_data": np.arange(12, dtype=np.float32).reshape(3, 4),
              "peak_fs": np.array([1.0]), "peak_ss": np.array([2.0]),
              "peak_intensity": np.array([30.0]), "beam_energy": 12400.0,
              "detector_distance": 100.0, "timestamp": 1.5, "event_id": "e1",
              "frame_is_hit": True}
    for _ in range(5):
        feed.offer(result)
    assert feed.frames_published == 0  # nobody subscribed: no payload built, nothing sent
    indexamajig = _subscriber(broadcaster.url, SUB_MODE_TAG.encode())

    def offered_and_published() -> bool:
        feed.offer(result)
        return feed.frames_published > 0

    assert eventually(offered_and_published)
    assert indexamajig.poll(int(_TIMEOUT * 1000))
    tag, payload = indexamajig.recv_multipart()
    assert tag == SUB_MODE_TAG.encode()
    assert unpack(payload)["event_id"] == "e1"
    indexamajig.close()
