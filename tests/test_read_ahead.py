# SPDX-License-Identifier: GPL-3.0-or-later
"""Running a generator ahead in a thread (``om.lib.read_ahead``): order, bound, errors, early
stop and clean-up in the producer's thread."""

import threading
import time

import pytest
from helpers import eventually

from om.lib.read_ahead import read_ahead

TIMEOUT_S = 10.0


class Producer:
    """A generator function that records what it produced, in which thread, and its clean-up."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.produced = 0
        self.threads: set[str] = set()
        self.cleaned_up_in: str | None = None

    def __call__(self):
        try:
            for index in range(self.count):
                self.threads.add(threading.current_thread().name)
                if index == self.fail_at:
                    raise OSError(f"cannot read item {index}")
                self.produced += 1
                yield index
        finally:
            self.cleaned_up_in = threading.current_thread().name


@pytest.mark.parametrize("depth", [1, 3])
def test_every_item_in_order_from_another_thread(depth):
    producer = Producer(50)
    assert list(read_ahead(producer, depth, name="om-test-reader")) == list(range(50))
    assert producer.threads == {"om-test-reader"}
    assert producer.cleaned_up_in == "om-test-reader"


def test_the_producer_runs_at_most_depth_items_ahead():
    producer = Producer(100)
    items = read_ahead(producer, 3)
    assert next(items) == 0
    # One consumed, three waiting in the queue, one produced and waiting for room.
    assert eventually(lambda: producer.produced == 5, TIMEOUT_S)
    time.sleep(0.3)  # it must stay blocked
    assert producer.produced == 5
    items.close()


def test_an_error_reaches_the_consumer_after_the_items_before_it():
    producer = Producer(10, fail_at=4)
    items = read_ahead(producer, 2)
    assert [next(items) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(OSError, match="cannot read item 4"):
        next(items)
    assert producer.cleaned_up_in is not None


def test_a_producer_that_fails_at_once_is_reported():
    def produce():
        raise FileNotFoundError("no such file")

    with pytest.raises(FileNotFoundError, match="no such file"):
        list(read_ahead(produce, 2))


def test_closing_early_stops_the_thread_and_cleans_up_there():
    producer = Producer(1_000_000)
    items = read_ahead(producer, 2, name="om-test-early")
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()  # waits for the thread
    assert producer.cleaned_up_in == "om-test-early"
    assert not any(thread.name == "om-test-early" for thread in threading.enumerate())
    assert producer.produced < 10


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        next(read_ahead(lambda: iter([1]), 0))
