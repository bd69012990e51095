# SPDX-License-Identifier: GPL-3.0-or-later
"""Frames on demand: the processing ranks send frames only as often as subscribers want them
(om/lib/frame_demand.py), told through the MPI layer's feedback (OM's mechanism)."""

import itertools
import math
import time

import pytest
import zmq
from helpers import (
    Process,
    configure,
    counts_during,
    eventually,
    free_port,
    monitor_command,
    receive_until,
    simulator_command,
    subscriber,
)

from om.lib.broadcast import DataBroadcaster
from om.lib.crystfel_feed import REQUEST_PATIENCE, CrystfelFrameFeed
from om.lib.frame_demand import FEEDBACK_KEY, FrameDemand, FrameSendingGate
from om.lib.responding_socket import RespondingSocket


def test_the_gate_sends_every_due_frame_until_told_otherwise():
    gate = FrameSendingGate(processing_ranks=2)
    assert all(gate.allows(now=0.0) for _ in range(5))
    gate.update({FEEDBACK_KEY: 0.0})
    assert not any(gate.allows(now=t) for t in (0.0, 10.0, 1e6))
    gate.update({"detector_data": None})  # an event without feedback changes nothing
    assert not gate.allows(now=2e6)
    gate.update({FEEDBACK_KEY: math.inf})
    assert all(gate.allows(now=3e6) for _ in range(5))


def test_the_gate_shares_the_wanted_rate_between_the_processing_ranks():
    gate = FrameSendingGate(processing_ranks=2)
    gate.update({FEEDBACK_KEY: 16.0})  # 8 a second for this rank: one every 0.125 s
    times = [t / 64 for t in range(3 * 64)]  # 3 s in steps of 1/64 s (exact in binary)
    sent = [t for t in times if gate.allows(now=t)]
    assert len(sent) == 24
    assert min(b - a for a, b in itertools.pairwise(sent)) == 0.125


@pytest.mark.parametrize("value", [-1.0, math.nan, "many", True, None])
def test_bad_feedback_is_counted_and_ignored(value):
    gate = FrameSendingGate(processing_ranks=1)
    gate.update({FEEDBACK_KEY: 0.0})
    _, counts = counts_during(lambda: gate.update({FEEDBACK_KEY: value}))
    assert counts == {"bad_rank_message": 1}
    assert not gate.allows(now=1e6)  # the last good value holds


def test_the_collecting_rank_tells_only_changes_at_most_ten_times_a_second():
    demand = FrameDemand(collecting_rank=0)
    wanted = [math.inf]
    assert demand.feedback(lambda: wanted[0], now=0.0) is None  # as the ranks start
    wanted[0] = 0.0
    assert demand.feedback(lambda: wanted[0], now=0.05) is None  # looked at 0.05 s ago
    assert demand.feedback(lambda: wanted[0], now=0.1) == {0: {FEEDBACK_KEY: 0.0}}
    assert demand.feedback(lambda: wanted[0], now=0.3) is None
    wanted[0] = 20.0
    assert FrameDemand(collecting_rank=2).feedback(lambda: 20.0, now=0.0) == {
        2: {FEEDBACK_KEY: 20.0}}
    assert demand.feedback(lambda: wanted[0], now=0.4) == {0: {FEEDBACK_KEY: 20.0}}


def test_the_crystfel_feed_wants_frames_only_while_someone_takes_them():
    broadcaster = DataBroadcaster(url=f"tcp://127.0.0.1:{free_port()}")
    responder = RespondingSocket(url=f"tcp://127.0.0.1:{free_port()}", handlers={})
    feed = CrystfelFrameFeed(broadcaster=broadcaster, responding_socket=responder,
                             frames="hits", interval=1, max_rate=20.0, queue_length=4)
    try:
        assert feed.frames_wanted_per_second() == 0.0
        with subscriber(broadcaster.url, b"ondaframedata"):
            assert eventually(lambda: feed.frames_wanted_per_second() == 40.0)
        assert eventually(lambda: feed.frames_wanted_per_second() == 0.0)
        client = zmq.Context.instance().socket(zmq.REQ)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(responder.url)
        client.send(b"next")
        try:
            # The request waits for a frame: the feed wants every frame the ranks can send.
            assert eventually(lambda: (responder.serve(10),
                                       feed.frames_wanted_per_second())[1] == math.inf)
        finally:
            client.close(0)
    finally:
        responder.close()
        broadcaster.close(0)
    assert REQUEST_PATIENCE >= 5.0  # indexamajig's workers ask between frames they index


@pytest.mark.slow
def test_frames_flow_only_while_a_subscriber_wants_them(tmp_path, real_module_file,
                                                       geometry_1m, real_calibration):
    """3 ranks on the real frames at 60 frames/s, every hit due for sending (the example
    monitor.yaml): with only an omdata subscriber the processing ranks stop sending frames;
    an omframedata subscriber brings them back, at most 20 a second."""
    config, broadcast = configure(tmp_path, geometry_1m, *real_calibration,
                                  hit_frame_sending_interval=1, data_broadcast_interval=5)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    simulator = Process(simulator_command(urls, "--file", str(real_module_file), "--rate", "60",
                                          "--frames", "100000"), tmp_path, "simulator")
    monitor = Process(monitor_command(urls, config), tmp_path, "monitor")
    alive = lambda: monitor.popen.poll() is None
    try:
        with subscriber(broadcast, b"omdata") as omdata:
            first = receive_until(omdata, lambda m: m["num_events"] >= 60, 180, alive)
            # Feedback reached both ranks within these 60 events (its first chance is the
            # first event); frames already on their way have arrived a broadcast later.
            settled = receive_until(omdata, lambda m: m["num_events"] >= first["num_events"] + 5,
                                    60, alive)
            later = receive_until(omdata,
                                  lambda m: m["num_events"] >= settled["num_events"] + 60,
                                  60, alive)
            assert later["num_frames_received"] == settled["num_frames_received"], (
                settled, later)
            assert later["num_events"] > later["num_frames_received"] + 100
            with subscriber(broadcast, b"omframedata") as omframedata:
                frame = receive_until(omframedata, lambda m: True, 60, alive)
                assert frame["frame_is_hit"] and frame["num_peaks"] > 100
                start = receive_until(omdata, lambda m: True, 10, alive)
                started = time.monotonic()
                end = receive_until(
                    omdata, lambda m: m["num_events"] >= start["num_events"] + 120, 60, alive)
                elapsed = time.monotonic() - started
        frames = end["num_frames_received"] - start["num_frames_received"]
        hits = end["num_hits"] - start["num_hits"]
        # At most 20 frames a second for the frame broadcasts (10 a second), 10 per rank; the
        # broadcasts' own timing blurs the window's ends by at most 0.2 s each.
        assert 0 < frames <= 20 * (elapsed + 0.4) + 2, (frames, elapsed, hits)
        assert frames < hits
    finally:
        code = monitor.stop()
        simulator.stop()
        print(monitor.stdout[-3000:], monitor.stderr[-3000:])
    assert code == 0
