# SPDX-License-Identifier: GPL-3.0-or-later
"""Frames from a processing rank to the collecting rank through shared memory
(``om.parallelization_layer.shared_result_buffers``): the bytes arrive intact, slots are reused
only once given back, and every malformed descriptor is refused with one error type. The
whole monitor with MPI's single-copy transfers off runs in tests/test_files_source.py."""

import os

import numpy as np
import pytest

from om.lib.exceptions import OmInvalidDataError
from om.parallelization_layer.shared_result_buffers import (
    CANNOT_ATTACH,
    SharedBufferReceiver,
    SharedBufferSender,
)


@pytest.fixture
def pair():
    """A sender of 2 slots and a receiver, closed after the test."""
    sender, receiver = SharedBufferSender(n_slots=2), SharedBufferReceiver()
    yield sender, receiver
    sender.close()
    receiver.close()


def _frame(seed, shape=(64, 128)):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_buffers_arrive_intact_and_slots_come_back(pair):
    sender, receiver = pair
    frames = [_frame(seed) for seed in range(5)]
    first = sender.put(memoryview(frames[0]).cast("B"))
    second = sender.put(memoryview(frames[1]).cast("B"))
    assert first["slot"] != second["slot"]
    assert os.path.exists(first["path"])
    assert sender.put(memoryview(frames[2]).cast("B")) is None  # both slots in use
    received, slot = receiver.take(1, first)
    assert np.array_equal(received.view(np.float32).reshape(64, 128), frames[0])
    frames[0][:] = 0  # a copy: the sender's array is free again
    assert received.view(np.float32).sum() > 0
    sender.release(slot)
    assert not os.path.exists(first["path"])  # mapped by both: the file can go
    third = sender.put(memoryview(frames[3]).cast("B"))
    assert third["slot"] == slot  # reused once given back
    for descriptor, frame in ((second, frames[1]), (third, frames[3])):
        received, slot = receiver.take(1, descriptor)
        assert np.array_equal(received.view(np.float32).reshape(64, 128), frame)
        sender.release(slot)
    # Larger than a slot while a slot is in use: sent another way.
    assert sender.put(memoryview(frames[4]).cast("B"))["slot"] is not None
    assert sender.put(memoryview(_frame(9, (128, 128))).cast("B")) is None


def test_a_larger_buffer_gets_a_new_segment_when_the_old_one_is_unused(pair):
    sender, receiver = pair
    small = sender.put(memoryview(_frame(1, (8, 8))).cast("B"))
    sender.release(receiver.take(1, small)[1])
    large = _frame(2, (256, 256))
    descriptor = sender.put(memoryview(large).cast("B"))
    assert descriptor["path"] != small["path"] and descriptor["slot_bytes"] == large.nbytes
    received, _ = receiver.take(1, descriptor)
    assert np.array_equal(received.view(np.float32).reshape(256, 256), large)


def test_a_collecting_rank_that_cannot_see_the_segment_turns_it_off(pair):
    sender, _ = pair
    descriptor = sender.put(memoryview(_frame(1)).cast("B"))
    sender.release(CANNOT_ATTACH)
    assert not os.path.exists(descriptor["path"])  # nothing left in /dev/shm
    assert sender.put(memoryview(_frame(2)).cast("B")) is None


def _descriptor(sender, **changes):
    descriptor = sender.put(memoryview(_frame(3)).cast("B"))
    return {**descriptor, **changes}


@pytest.mark.parametrize("changes, reason", [
    ({"slot": 2}, "slot 2 of 2"),
    ({"slot": -1}, "slot -1 of 2"),
    ({"nbytes": 10**9}, "bytes in slots of"),
    ({"slot": "x"}, "descriptor"),
    ({"path": "/dev/shm/om_results_absent"}, "not visible here"),
    ({"token": b"0" * 16}, "not visible here"),
])
def test_malformed_descriptors_are_refused(changes, reason, pair):
    sender, receiver = pair
    with pytest.raises(OmInvalidDataError, match=reason):
        receiver.take(1, _descriptor(sender, **changes))
    with pytest.raises(OmInvalidDataError, match="descriptor"):
        receiver.take(1, [1, 2, 3])


def test_a_descriptor_that_contradicts_the_mapped_segment_is_refused(pair):
    sender, receiver = pair
    descriptor = _descriptor(sender)
    receiver.take(1, descriptor)
    with pytest.raises(OmInvalidDataError, match="does not match its segment"):
        receiver.take(1, {**descriptor, "slot_bytes": descriptor["slot_bytes"] + 8})
