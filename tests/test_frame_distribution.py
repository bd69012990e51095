# SPDX-License-Identifier: GPL-3.0-or-later
"""Frame distribution from the collecting rank to processing ranks, on real sockets and memory."""

import os
import time

import numpy as np
import pytest
import zmq

from om.data_retrieval_layer.frame_distribution import FrameDealer, FrameReceiver
from om.lib.problems import problems
from om.lib.serialization import pack
from om.lib.shared_frame_slots import SharedFrameSlots

SLOT_BYTES = 2 * 512 * 1024 * 2


def _images(value: int) -> list[bytes]:
    return [np.full((512, 1024), value, "<u2").tobytes(),
            np.full((512, 1024), value + 1, "<u2").tobytes()]


def _say_hello(dealer: FrameDealer, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while dealer.receivers < count:
        assert time.monotonic() < deadline, f"{dealer.receivers} of {count} receivers said hello"
        if dealer.socket.poll(100):
            dealer.handle_messages()


def _give_back(dealer: FrameDealer, receiver: FrameReceiver, frame, timeout: float = 10.0):
    free_before = sum(len(r.free) for r in dealer._receivers.values())
    receiver.release(frame)
    deadline = time.monotonic() + timeout
    while sum(len(r.free) for r in dealer._receivers.values()) == free_before:
        assert time.monotonic() < deadline, "the slot never came back"
        if dealer.socket.poll(100):
            dealer.handle_messages()


@pytest.fixture
def dealer():
    dealer = FrameDealer("127.0.0.1")
    yield dealer
    dealer.close()


@pytest.mark.parametrize("shared_memory", [True, False])
def test_frames_arrive_whole_and_slots_bound_what_a_rank_holds(dealer, shared_memory):
    receiver = FrameReceiver(dealer.endpoint, n_slots=2, slot_bytes=SLOT_BYTES,
                             shared_memory=shared_memory)
    try:
        _say_hello(dealer, 1)
        assert dealer.shared_memory_receivers == int(shared_memory)
        assert dealer.deal({"frame_number": 1}, _images(10))
        assert dealer.deal({"frame_number": 2}, _images(20))
        assert not dealer.deal({"frame_number": 3}, _images(30))  # both slots taken
        first = receiver.receive(5000)
        assert first.metadata["frame_number"] == 1
        assert [bytes(image) for image in first.images] == _images(10)
        module = np.frombuffer(first.images[0], "<u2")
        assert not module.flags.writeable  # nobody writes into a frame being read
        _give_back(dealer, receiver, first)
        assert dealer.deal({"frame_number": 4}, _images(40))  # the slot came back
        second, third = receiver.receive(5000), receiver.receive(5000)
        assert [second.metadata["frame_number"], third.metadata["frame_number"]] == [2, 4]
        assert [bytes(image) for image in second.images] == _images(20)
        assert [bytes(image) for image in third.images] == _images(40)
    finally:
        receiver.close()


def test_the_least_busy_rank_gets_the_frame(dealer):
    receivers = [FrameReceiver(dealer.endpoint, n_slots=3, slot_bytes=SLOT_BYTES)
                 for _ in range(2)]
    try:
        _say_hello(dealer, 2)
        for number in range(4):
            assert dealer.deal({"frame_number": number}, _images(number))
        got = [[], []]
        for index, receiver in enumerate(receivers):
            while (frame := receiver.receive(1000)) is not None:
                got[index].append(frame.metadata["frame_number"])
                if len(got[index]) == 2:
                    break
        assert sorted(got[0] + got[1]) == [0, 1, 2, 3]
        assert len(got[0]) == len(got[1]) == 2  # alternated, not 3 + 1
    finally:
        for receiver in receivers:
            receiver.close()


def test_a_receiver_whose_memory_the_dealer_cannot_see_gets_frames_over_the_network(dealer):
    """A receiver on another host announces a segment the dealer cannot map (here: a wrong
    token); the dealer falls back to sending the images in the message."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(dealer.endpoint)
    slots = SharedFrameSlots.create(1, SLOT_BYTES)
    try:
        socket.send_multipart([b"hello", pack({"slots": 1, "slot_bytes": SLOT_BYTES,
                                               "path": slots.path, "token": b"x" * 16})])
        _say_hello(dealer, 1)
        assert dealer.shared_memory_receivers == 0
        assert dealer.deal({"frame_number": 7}, _images(7))
        assert socket.poll(5000)
        parts = socket.recv_multipart()
        assert len(parts) == 3 and parts[1:] == _images(7)
    finally:
        socket.close(0)
        slots.unlink()
        slots.close()


def test_malformed_messages_are_counted_and_dealing_goes_on(dealer):
    receiver = FrameReceiver(dealer.endpoint, n_slots=1, slot_bytes=SLOT_BYTES)
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(dealer.endpoint)
    try:
        _say_hello(dealer, 1)
        before = problems.counts().get("bad_message", 0)
        rogue.send_multipart([b"free", pack(0)])  # never said hello
        rogue.send_multipart([b"gossip", b""])  # unknown kind
        rogue.send_multipart([b"hello", b"\xc1"])  # not msgpack
        rogue.send_multipart([b"hello"])  # too few parts
        deadline = time.monotonic() + 10
        while problems.counts().get("bad_message", 0) - before < 4:
            assert time.monotonic() < deadline, problems.counts()
            if dealer.socket.poll(100):
                dealer.handle_messages()
        assert dealer.receivers == 1
        assert dealer.deal({"frame_number": 1}, _images(1))
        frame = receiver.receive(5000)
        assert frame.metadata["frame_number"] == 1
    finally:
        rogue.close(0)
        receiver.close()


def test_segments_leave_nothing_behind(dealer):
    receiver = FrameReceiver(dealer.endpoint, n_slots=2, slot_bytes=SLOT_BYTES)
    path = receiver._slots.path
    assert os.path.exists(path)
    _say_hello(dealer, 1)
    assert not os.path.exists(path)  # unlinked once both ends mapped it
    assert dealer.deal({"frame_number": 1}, _images(1))
    frame = receiver.receive(5000)
    assert bytes(frame.images[1]) == _images(1)[1]  # still readable after the unlink
    receiver.close()


def test_attach_refuses_a_segment_of_another_size_or_token():
    slots = SharedFrameSlots.create(2, 4096)
    try:
        with pytest.raises(ValueError, match="bytes"):
            SharedFrameSlots.attach(slots.path, 3, 4096, slots.token)
        with pytest.raises(ValueError, match="token"):
            SharedFrameSlots.attach(slots.path, 2, 4096, b"y" * 16)
        with pytest.raises(OSError):
            SharedFrameSlots.attach(slots.path + "_absent", 2, 4096, slots.token)
        other = SharedFrameSlots.attach(slots.path, 2, 4096, slots.token)
        other.slot(1)[:3] = [1, 2, 3]
        assert slots.slot(1)[:3].tolist() == [1, 2, 3]  # the same memory
        with pytest.raises(IndexError):
            slots.slot(2)
        other.close()
    finally:
        slots.unlink()
        slots.close()


def test_a_receiver_whose_process_dies_is_forgotten_and_its_frames_counted(tmp_path):
    """A processing rank killed while it holds frames: no frame goes to it any more, and the
    frames it held are counted as frames_lost_with_rank."""
    import signal
    import subprocess
    import sys

    from helpers import eventually

    dealer = FrameDealer("127.0.0.1")
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from om.data_retrieval_layer.frame_distribution import FrameReceiver\n"
        f"receiver = FrameReceiver(sys.argv[1], n_slots=3, slot_bytes={SLOT_BYTES})\n"
        "held = []\n"
        "while len(held) < 2:\n"
        "    frame = receiver.receive(100)\n"
        "    held += [frame] if frame is not None else []\n"
        "print('holding', flush=True)\n"
        "time.sleep(120)\n"), dealer.endpoint], stdout=subprocess.PIPE, text=True)
    try:
        _say_hello(dealer, 1, timeout=60)
        assert dealer.deal({"frame_number": 1}, _images(1))
        assert dealer.deal({"frame_number": 2}, _images(2))
        assert child.stdout.readline() == "holding\n"
        before = problems.counts().get("frames_lost_with_rank", 0)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert eventually(lambda: (dealer.forget_gone_receivers(), dealer.receivers)[1] == 0, 10)
        assert problems.counts()["frames_lost_with_rank"] == before + 2
        assert not dealer.deal({"frame_number": 3}, _images(3))  # nobody left to take it
    finally:
        if child.poll() is None:
            child.kill()
        dealer.close()
