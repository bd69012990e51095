# SPDX-License-Identifier: GPL-3.0-or-later
"""Frame distribution from the collecting rank to processing ranks, on real sockets and memory."""

import os
import secrets
import time

import numpy as np
import psutil
import pytest
import zmq

from om.data_retrieval_layer.frame_distribution import (
    MAX_SLOTS,
    FrameDealer,
    FrameReceiver,
    new_secret,
)
from om.lib.problems import problems
from om.lib.serialization import pack
from om.lib.shared_frame_slots import SharedFrameSlots

SLOT_BYTES = 2 * 512 * 1024 * 2
SECRET = new_secret()


def _images(value: int) -> list[bytes]:
    return [np.full((512, 1024), value, "<u2").tobytes(),
            np.full((512, 1024), value + 1, "<u2").tobytes()]


def _count(kind: str) -> int:
    return problems.counts().get(kind, 0)


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
    dealer = FrameDealer("127.0.0.1", secret=SECRET)
    yield dealer
    dealer.close()


@pytest.mark.parametrize("shared_memory", [True, False])
def test_frames_arrive_whole_and_slots_bound_what_a_rank_holds(dealer, shared_memory):
    receiver = FrameReceiver(dealer.endpoint, n_slots=2, slot_bytes=SLOT_BYTES, secret=SECRET,
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
    receivers = [FrameReceiver(dealer.endpoint, n_slots=3, slot_bytes=SLOT_BYTES, secret=SECRET)
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
        socket.send_multipart([b"hello", pack({"secret": SECRET, "slots": 1,
                                               "slot_bytes": SLOT_BYTES,
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
    receiver = FrameReceiver(dealer.endpoint, n_slots=1, slot_bytes=SLOT_BYTES, secret=SECRET)
    rogue = zmq.Context.instance().socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(dealer.endpoint)
    try:
        _say_hello(dealer, 1)
        before = _count("bad_message"), _count("rejected_frame_receiver")
        rogue.send_multipart([b"free", pack(0)])  # never said hello
        rogue.send_multipart([b"gossip", b""])  # unknown kind
        rogue.send_multipart([b"hello", b"\xc1"])  # not msgpack: a rejected hello
        rogue.send_multipart([b"hello"])  # too few parts
        deadline = time.monotonic() + 10
        while (_count("bad_message") - before[0], _count("rejected_frame_receiver") - before[1]
               ) != (3, 1):
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
    receiver = FrameReceiver(dealer.endpoint, n_slots=2, slot_bytes=SLOT_BYTES, secret=SECRET)
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
        with pytest.raises(FileNotFoundError):
            SharedFrameSlots.attach(slots.path[:-12] + "abcdef000000", 2, 4096, slots.token)
        other = SharedFrameSlots.attach(slots.path, 2, 4096, slots.token)
        other.slot(1)[:3] = [1, 2, 3]
        assert slots.slot(1)[:3].tolist() == [1, 2, 3]  # the same memory
        with pytest.raises(IndexError):
            slots.slot(2)
        other.close()
    finally:
        slots.unlink()
        slots.close()


# Hostile hellos: the dealer's port is open to every user of the host --------------------------

def _rogue(dealer: FrameDealer) -> zmq.Socket:
    """A DEALER socket that speaks the protocol but is no processing rank of the monitor."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(dealer.endpoint)
    return socket


def _segment_name() -> str:
    """A free name of the form SharedFrameSlots.create makes, in the shared memory folder."""
    probe = SharedFrameSlots.create(1, 1)
    probe.unlink()
    probe.close()
    return os.path.join(os.path.dirname(probe.path),
                        f"om_frames_{os.getpid()}_{secrets.token_hex(6)}")


@pytest.fixture
def precious(tmp_path):
    """Another file of the user, sized and headed as a segment of one frame slot would be (an
    HDF5 file's first 16 bytes are fixed, so its 'token' is known to anyone)."""
    path = tmp_path / "precious.h5"
    content = b"\x89HDF\r\n\x1a\n" + bytes(8) + np.random.default_rng(1).integers(
        0, 256, 4096 - 16 + SLOT_BYTES, dtype=np.uint8).tobytes()
    path.write_bytes(content)
    return path, content


def _outcome(dealer: FrameDealer, timeout: float = 10.0) -> str:
    """Handles the dealer's messages until the last one sent had an effect; says which:
    ``rejected`` (counted as such), ``registered``, ``raised ...``, ``counted as ...``."""
    counts, receivers = problems.counts(), dealer.receivers
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dealer.socket.poll(100):
            try:
                dealer.handle_messages()
            except Exception as error:  # the dealer of main let decoding errors out
                return f"raised {type(error).__name__}"
        if _count("rejected_frame_receiver") > counts.get("rejected_frame_receiver", 0):
            return "rejected"
        if dealer.receivers != receivers:
            return "registered"
        new = {kind for kind, count in problems.counts().items() if count > counts.get(kind, 0)}
        if new:
            return f"counted as {sorted(new)}"
    return "nothing"


@pytest.mark.parametrize("named", ["path, no secret", "path, with the secret",
                                   "symbolic link in the shared memory folder, with the secret"])
def test_a_hello_naming_another_file_of_the_user_neither_deletes_nor_writes_it(
        dealer, precious, named):
    path, content = precious
    announced = str(path)
    if named.startswith("symbolic link"):
        announced = _segment_name()
        os.symlink(path, announced)
    receiver = FrameReceiver(dealer.endpoint, n_slots=2, slot_bytes=SLOT_BYTES, secret=SECRET)
    rogue = _rogue(dealer)
    # The file's inode, to see what is written into it even after an unlink.
    with open(path, "rb") as held:
        try:
            _say_hello(dealer, 1)
            hello = {"slots": 1, "slot_bytes": SLOT_BYTES, "path": announced,
                     "token": content[:16]}
            if "with the secret" in named:
                hello["secret"] = SECRET
            rogue.send_multipart([b"hello", pack(hello)])
            outcome = _outcome(dealer)
            for number in (1, 2):
                dealer.deal({"frame_number": number}, _images(number))
            held.seek(0)
            written = held.read() != content
            assert (path.exists(), written) == (True, False), "deleted or written into"
            if announced != str(path):
                assert os.path.islink(announced)  # nothing unlinked that failed the checks
            assert outcome == "rejected"
            frames = [receiver.receive(5000), receiver.receive(5000)]
            assert [frame.metadata["frame_number"] for frame in frames if frame] == [1, 2]
        finally:
            rogue.close(0)
            receiver.close()
            if announced != str(path) and os.path.lexists(announced):
                os.unlink(announced)


def _hostile_segment(kind: str, made: list[str]) -> dict:
    """A hello field set whose segment fails one of the dealer's checks."""
    slots = SharedFrameSlots.create(1, 4096)
    made.append(slots.path)
    fields = {"slots": 1, "slot_bytes": 4096, "token": slots.token}
    if kind == "symlink":
        link = _segment_name()
        os.symlink(slots.path, link)
        made.append(link)
        return {**fields, "path": link}
    if kind == "mode":
        os.chmod(slots.path, 0o644)
        return {**fields, "path": slots.path}
    if kind == "hard link":
        link = _segment_name()
        os.link(slots.path, link)
        made.append(link)
        return {**fields, "path": link}
    raise ValueError(kind)


HOSTILE_HELLOS = {
    "slots 5e6 (float)": lambda made: {"secret": SECRET, "slots": 5e6, "slot_bytes": 1},
    "slots 5000000": lambda made: {"secret": SECRET, "slots": 5_000_000, "slot_bytes": 1},
    "slots 2**63": lambda made: {"secret": SECRET, "slots": 2**63, "slot_bytes": 1},
    "slots 2**64-1": lambda made: {"secret": SECRET, "slots": 2**64 - 1, "slot_bytes": 1},
    "slots True": lambda made: {"secret": SECRET, "slots": True, "slot_bytes": 1},
    "slot_bytes 2**62": lambda made: {"secret": SECRET, "slots": 1, "slot_bytes": 2**62},
    "token 2**45": lambda made: {"secret": SECRET, "slots": 1, "slot_bytes": 1, "path": "x",
                                 "token": 2**45},
    "wrong secret": lambda made: {"secret": bytes(32), "slots": 1, "slot_bytes": 1},
    "secret of another type": lambda made: {"secret": 2**45, "slots": 1, "slot_bytes": 1},
    "missing secret": lambda made: {"slots": 1, "slot_bytes": 1},
    "a list": lambda made: [SECRET, 1, 1],
    "symlink": lambda made: {"secret": SECRET, **_hostile_segment("symlink", made)},
    "file of mode 0644": lambda made: {"secret": SECRET, **_hostile_segment("mode", made)},
    "hard link": lambda made: {"secret": SECRET, **_hostile_segment("hard link", made)},
}


def test_hostile_hellos_are_rejected_counted_and_the_real_ranks_still_get_frames(dealer):
    receiver = FrameReceiver(dealer.endpoint, n_slots=1, slot_bytes=SLOT_BYTES, secret=SECRET)
    made: list[str] = []
    outcomes = {}
    try:
        _say_hello(dealer, 1)
        for number, (name, hello) in enumerate(HOSTILE_HELLOS.items()):
            rogue = _rogue(dealer)  # one identity each: none replaces another
            rogue.send_multipart([b"hello", pack(hello(made))])
            outcome = _outcome(dealer)
            dealt = dealer.deal({"frame_number": number}, _images(number))
            frame = receiver.receive(5000) if dealt else None
            if frame is None or frame.metadata["frame_number"] != number:
                outcome += ", the real rank got no frame"
            else:
                _give_back(dealer, receiver, frame)
            outcomes[name] = outcome
            rogue.close(0)
        unlinked = [path for path in made if not os.path.lexists(path)]
        assert outcomes == dict.fromkeys(HOSTILE_HELLOS, "rejected")
        assert not unlinked, "unlinked though they failed the checks"
        assert dealer.receivers == 1
    finally:
        receiver.close()
        for path in made:
            if os.path.lexists(path):
                os.unlink(path)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


RSS_BOUND_MB = 20  # what a flood of hellos or of unread frames may add to the dealer's process


def test_hellos_announcing_millions_of_slots_cost_no_memory(dealer):
    receiver = FrameReceiver(dealer.endpoint, n_slots=1, slot_bytes=SLOT_BYTES, secret=SECRET)
    rogues = [_rogue(dealer) for _ in range(3)]
    try:
        _say_hello(dealer, 1)
        before = _rss_mb()
        outcomes = []
        for rogue in rogues:  # the secret leaked: only the range check stands
            rogue.send_multipart([b"hello", pack({"secret": SECRET, "slots": 5_000_000,
                                                  "slot_bytes": 1})])
            outcomes.append(_outcome(dealer))
        grown = _rss_mb() - before
        print(f"RSS {before:.0f} MB before 3 hellos of 5e6 slots, +{grown:.1f} MB after")
        assert grown < RSS_BOUND_MB
        assert outcomes == ["rejected"] * 3
    finally:
        for rogue in rogues:
            rogue.close(0)
        receiver.close()


def test_a_receiver_that_gives_slots_back_unread_cannot_pile_frames_up(dealer):
    """A client with the secret (a processing rank gone wrong) that frees its slot without
    reading: the dealer's send limit drops frames instead of queueing them without end."""
    rogue = _rogue(dealer)
    rogue.setsockopt(zmq.RCVHWM, 1)  # it hurts the dealer, not itself
    try:
        rogue.send_multipart([b"hello", pack({"secret": SECRET, "slots": 1,
                                              "slot_bytes": 1})])  # frames in the messages
        _say_hello(dealer, 1)
        image_bytes = 256 * 1024
        before = _rss_mb()
        refused = 0
        for number in range(2000):  # 500 MB if every frame stayed queued
            images = [np.full(image_bytes, number % 251, np.uint8).tobytes()]
            if not dealer.deal({"frame_number": number}, images):
                refused += 1
                continue
            rogue.send_multipart([b"free", pack(0)])
            _outcome_free(dealer)
        grown = _rss_mb() - before
        print(f"RSS {before:.0f} MB before 2000 unread frames of 256 kB, +{grown:.1f} MB "
              f"after; {refused} refused")
        assert refused > 0
        assert grown < RSS_BOUND_MB + (MAX_SLOTS * image_bytes) / 2**20
    finally:
        rogue.close(0)


def _outcome_free(dealer: FrameDealer, timeout: float = 10.0) -> None:
    """Handles messages until the dealer's only receiver has its slot back."""
    deadline = time.monotonic() + timeout
    receiver = next(iter(dealer._receivers.values()))
    while not receiver.free:
        assert time.monotonic() < deadline, "the slot never came back"
        if dealer.socket.poll(100):
            dealer.handle_messages()


def test_a_receiver_whose_process_dies_is_forgotten_and_its_frames_counted(tmp_path):
    """A processing rank killed while it holds frames: no frame goes to it any more, and the
    frames it held are counted as frames_lost_with_rank."""
    import signal
    import subprocess
    import sys

    from helpers import eventually

    dealer = FrameDealer("127.0.0.1", secret=SECRET)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from om.data_retrieval_layer.frame_distribution import FrameReceiver\n"
        f"receiver = FrameReceiver(sys.argv[1], n_slots=3, slot_bytes={SLOT_BYTES}, "
        f"secret={SECRET!r})\n"
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
