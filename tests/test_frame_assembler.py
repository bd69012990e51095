# SPDX-License-Identifier: GPL-3.0-or-later
"""The JUNGFRAU frame assembler on real ZeroMQ sockets on 127.0.0.1, in a thread and in a
process of its own (``frame_assembly_process``)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import zmq

from om.data_retrieval_layer.frame_assembler_process import (
    ASSEMBLER_PROCESS_ENDED,
    FrameAssemblerProcess,
)
from om.data_retrieval_layer.frame_distribution import FrameReceiver, new_secret
from om.data_retrieval_layer.jungfrau_frame_assembler import (
    ASSEMBLER_ERROR,
    ASSEMBLER_THREAD_ENDED,
    JungfrauFrameAssembler,
)
from om.lib.exceptions import OmConfigurationError
from om.lib.problems import problems
from om.lib.serialization import pack
from om.simulation.jungfrau_stream import JungfrauStreamSender

from helpers import DOCS, eventually


SECRET = new_secret()


def _settings(urls, **changes):
    return {"stream_urls": urls, "distribution_host": "127.0.0.1", "rows_per_stream": 512,
            "assembly_timeout": 0.3, "expected_receivers": 1, **changes}


@pytest.fixture(params=["thread", "process"])
def streams(request):
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    if request.param == "thread":
        assembler = JungfrauFrameAssembler(**_settings(sender.urls), secret=SECRET)
    else:
        assembler = FrameAssemblerProcess(assembler=_settings(sender.urls), secret=SECRET)
    assembler.start()
    receiver = FrameReceiver(assembler.endpoint, n_slots=8, slot_bytes=2 * 512 * 1024 * 2,
                             secret=SECRET)
    assert sender.wait_for_subscribers(10.0)
    yield sender, assembler, receiver
    receiver.close()
    assembler.stop()
    sender.close()


def _frames(receiver, count, timeout_ms=5000):
    """(metadata, [bytes per module]) of up to ``count`` frames; each slot given back."""
    received = []
    while len(received) < count:
        frame = receiver.receive(timeout_ms)
        if frame is None:
            break
        received.append((frame.metadata, [bytes(image) for image in frame.images]))
        receiver.release(frame)
    return received


def _module(value):
    return np.full((512, 1024), value, dtype=np.uint16)


def _count(kind):
    return problems.counts().get(kind, 0)


def test_complete_frames_are_forwarded_whole(streams):
    sender, assembler, pull = streams
    for number in range(1, 4):
        frame = np.concatenate([_module(number), _module(100 + number)])
        sender.send_frame(frame, number, timestamp_ticks=number * 10_000_000)
    received = _frames(pull, 3)
    assert [meta["frame_number"] for meta, _ in received] == [1, 2, 3]
    for meta, images in received:
        number = meta["frame_number"]
        assert np.frombuffer(images[0], "<u2")[0] == number
        assert np.frombuffer(images[1], "<u2")[0] == 100 + number
        assert meta["headers"][1]["modId"] == 1
    times = [meta["timestamp"] for meta, _ in received]
    np.testing.assert_allclose(np.diff(times), [1.0, 1.0])
    assert eventually(lambda: assembler.frames_forwarded == 3, 5)


def test_bad_input_is_counted_and_good_frames_follow(streams):
    sender, _, pull = streams
    before = problems.counts()
    sockets = sender._sockets
    good = sender.header(0, 10, 0, None)
    sockets[0].send_multipart([json.dumps(good).encode(), b"\x00" * 1000])  # wrong size
    sockets[0].send_multipart([b"{not json", _module(0).tobytes()])  # non-JSON header
    sockets[0].send_multipart([json.dumps({"data": 1}).encode(), _module(0).tobytes()])  # no frameNumber
    sockets[0].send_multipart([json.dumps(sender.header(0, 11, 0, None)).encode(),
                               _module(7).tobytes()])  # module 0 only
    sender.send_end_of_acquisition()
    sender.send_frame(np.concatenate([_module(12), _module(12)]), 12, 0)
    received = _frames(pull, 1)
    assert [meta["frame_number"] for meta, _ in received] == [12]
    assert _frames(pull, 1, timeout_ms=1000) == []  # frame 11 never comes: modules not mixed
    for kind, expected in (("wrong_size", 1), ("bad_header", 2), ("incomplete_frame", 1)):
        # From a process of its own, the counts come within 0.1 s.
        assert eventually(lambda: _count(kind) - before.get(kind, 0) == expected, 5), kind
    assert _count("wrong_size") - before.get("wrong_size", 0) == 1


def test_hostile_hellos_leave_the_assembler_dealing_to_the_real_rank(streams):
    """Hellos that ended the assembler thread (an OverflowError, a MemoryError) or gave a
    stranger frames: refused and counted; the real rank's frames keep coming."""
    sender, assembler, receiver = streams
    before = _count("rejected_frame_receiver")
    dealing_process = psutil.Process(getattr(assembler, "pid", os.getpid()))
    rss_before = dealing_process.memory_info().rss / 2**20
    rogues = []
    hellos = [{"secret": SECRET, "slots": 2**63, "slot_bytes": 1},
              {"secret": SECRET, "slots": 1, "slot_bytes": 1, "path": "x", "token": 2**45},
              {"slots": 4, "slot_bytes": 1},  # a stranger without the secret
              *[{"secret": SECRET, "slots": 5_000_000, "slot_bytes": 1}] * 3]
    for hello in hellos:
        rogue = zmq.Context.instance().socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(assembler.endpoint)
        rogue.send_multipart([b"hello", pack(hello)])
        rogues.append(rogue)
    try:
        # Counted in the child process first, then here (within 0.1 s).
        counted = eventually(lambda: _count("rejected_frame_receiver") - before == 6, 10)
        grown = dealing_process.memory_info().rss / 2**20 - rss_before
        print(f"RSS of the dealing process {rss_before:.0f} MB, +{grown:.1f} MB after the hellos")
        for number in range(1, 5):
            sender.send_frame(np.concatenate([_module(number), _module(number)]), number, 0)
        received = [meta["frame_number"] for meta, _ in _frames(receiver, 4)]
        assert received == [1, 2, 3, 4]
        assert counted, problems.counts()
        assert grown < 20  # MB; 3 hellos of 5e6 slots took 570 MB in main's dealer
        for rogue in rogues:
            assert not rogue.poll(0)  # no frame for a stranger
        assert getattr(assembler, "alive", None) or assembler.returncode is None
    finally:
        for rogue in rogues:
            rogue.close(0)


def _fail_every_turn_after(assembler, turns, error):
    """Makes the assembler's end of turn (``_expire``) raise ``error`` from turn ``turns`` on:
    a fault the assembler does not foresee, met by every turn."""
    expire, count = assembler._expire, []

    def failing(now):
        count.append(now)
        if len(count) >= turns:
            raise error
        expire(now)
    assembler._expire = failing


def test_an_error_in_one_turn_is_counted_and_assembly_goes_on():
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    assembler = JungfrauFrameAssembler(**_settings(sender.urls), secret=SECRET)
    receiver = FrameReceiver(assembler.endpoint, n_slots=8, slot_bytes=2 * 512 * 1024 * 2,
                             secret=SECRET)
    before = _count(ASSEMBLER_ERROR)
    expire = assembler._expire
    raised = []

    def once(now):
        if not raised:
            raised.append(now)
            raise RecursionError("maximum recursion depth exceeded")
        expire(now)
    assembler._expire = once
    assembler.start()
    try:
        assert sender.wait_for_subscribers(10.0)
        # The failing turn first (whenever the busy machine runs it), then a frame.
        assert eventually(lambda: bool(raised) and _count(ASSEMBLER_ERROR) > before, 30)
        sender.send_frame(np.concatenate([_module(3), _module(3)]), 3, 0)
        assert [meta["frame_number"] for meta, _ in _frames(receiver, 1)] == [3]
        assert assembler.alive
    finally:
        receiver.close()
        assembler.stop()
        sender.close()


def test_an_assembler_thread_that_ends_anyway_is_counted_and_logged(caplog):
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    assembler = JungfrauFrameAssembler(**_settings(sender.urls, expected_receivers=0),
                                       secret=SECRET)
    _fail_every_turn_after(assembler, 1, OverflowError("int too large to convert to float"))
    before = _count(ASSEMBLER_THREAD_ENDED)
    assembler.start()
    try:
        assert eventually(lambda: _count(ASSEMBLER_THREAD_ENDED) == before + 1, 30)
        assert not assembler.alive
        lines = [r.getMessage() for r in caplog.records if ASSEMBLER_THREAD_ENDED in r.getMessage()]
        assert len(lines) == 1 and "OverflowError" in lines[0]
    finally:
        assembler.stop()
        sender.close()
    for kind in (ASSEMBLER_ERROR, ASSEMBLER_THREAD_ENDED):
        assert f"| `{kind}` |" in (DOCS / "broadcast.md").read_text()


def test_a_module_image_after_its_frame_expired_is_late_not_a_second_incomplete_frame(streams):
    sender, _, receiver = streams
    before = problems.counts()
    sockets = sender._sockets
    sockets[0].send_multipart([json.dumps(sender.header(0, 20, 0, None)).encode(),
                               _module(20).tobytes()])
    deadline = time.monotonic() + 10  # the assembly timeout is 0.3 s
    while problems.counts().get("incomplete_frame", 0) == before.get("incomplete_frame", 0):
        assert time.monotonic() < deadline, "frame 20 never expired"
        time.sleep(0.05)
    sockets[1].send_multipart([json.dumps(sender.header(1, 20, 0, None)).encode(),
                               _module(120).tobytes()])
    sender.send_frame(np.concatenate([_module(21), _module(121)]), 21, 0)
    assert [meta["frame_number"] for meta, _ in _frames(receiver, 1)] == [21]
    # The late image is refused at once (never pending), so no second expiry can follow.
    while problems.counts().get("late_module_image", 0) == before.get("late_module_image", 0):
        assert time.monotonic() < deadline, "the late image was not counted"
        time.sleep(0.05)
    after = problems.counts()
    assert after.get("incomplete_frame", 0) - before.get("incomplete_frame", 0) == 1
    assert after.get("late_module_image", 0) - before.get("late_module_image", 0) == 1


def test_frame_numbers_a_stream_skips_are_counted(streams):
    sender, assembler, receiver = streams
    before = problems.counts().get("missed_module_images", 0)
    for number in (30, 31, 35, 36):  # 32-34 never sent: 3 per module stream
        sender.send_frame(np.concatenate([_module(number), _module(number)]), number, 0)
    assert [meta["frame_number"] for meta, _ in _frames(receiver, 4)] == [30, 31, 35, 36]
    assert eventually(lambda: _count("missed_module_images") - before == 2 * 3, 5)
    sender.send_end_of_acquisition()  # a new acquisition counts from 1 again: no gap
    sender.send_frame(np.concatenate([_module(1), _module(1)]), 1, 0)
    assert [meta["frame_number"] for meta, _ in _frames(receiver, 1)] == [1]
    assert eventually(lambda: assembler.acquisitions_ended == 2, 5)  # one per stream
    assert _count("missed_module_images") - before == 2 * 3


def test_the_process_reports_its_start_up_error():
    with pytest.raises(OmConfigurationError, match="cannot connect to the detector stream"):
        FrameAssemblerProcess(assembler=_settings(["tcp://127.0.0.1:1", "nonsense://x"]),
                              secret=SECRET)


_PARENT = """
import sys, time
from om.data_retrieval_layer.frame_assembler_process import FrameAssemblerProcess
assembler = FrameAssemblerProcess(assembler={settings!r}, secret=bytes(32))
assembler.start()
print(assembler.pid, flush=True)
time.sleep(120)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone
    except FileNotFoundError:
        return False


def test_the_process_does_not_outlive_the_collecting_rank():
    settings = _settings(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"])
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(settings=settings)],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)  # as mpiexec kills a rank
        parent.wait(10)
        assert eventually(lambda: not _alive(child), 10), "the assembler process outlived it"
    finally:
        parent.kill()
        parent.wait()


def test_a_process_that_dies_is_counted_and_logged():
    assembler = FrameAssemblerProcess(assembler=_settings(["tcp://127.0.0.1:1",
                                                          "tcp://127.0.0.1:2"]), secret=SECRET)
    assembler.start()
    before = _count(ASSEMBLER_PROCESS_ENDED)
    try:
        os.kill(assembler.pid, signal.SIGKILL)
        assert eventually(lambda: _count(ASSEMBLER_PROCESS_ENDED) == before + 1, 10)
    finally:
        assembler.stop()
    assert assembler.returncode == -signal.SIGKILL
    assert ASSEMBLER_PROCESS_ENDED in (DOCS / "broadcast.md").read_text()


def test_the_process_stops_when_asked_and_ignores_ctrl_c():
    sender = JungfrauStreamSender(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"])
    assembler = FrameAssemblerProcess(assembler=_settings(sender.urls, expected_receivers=0),
                                      secret=SECRET)
    assembler.start()
    before = _count(ASSEMBLER_PROCESS_ENDED)
    try:
        os.kill(assembler.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert sender.wait_for_subscribers(10.0)  # still there, subscribed
        sender.send_frame(np.concatenate([_module(5), _module(5)]), 5, 0)
        assert eventually(lambda: _count("frame_dropped_ranks_busy") > 0, 5)  # no receiver
    finally:
        assembler.stop()
        sender.close()
    assert assembler.returncode == 0
    assert _count(ASSEMBLER_PROCESS_ENDED) == before  # asked to stop: not a problem
