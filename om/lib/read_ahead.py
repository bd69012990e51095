# SPDX-License-Identifier: GPL-3.0-or-later
"""Running an event generator a few events ahead, in a thread of its own.

A processing rank that reads its images from files spends part of each event waiting for the
read (0.1-0.2 ms for a 2 MB JUNGFRAU 1M image from the page cache, ~10 % of the event). Read in
a background thread while the main thread calibrates and searches the previous image, that time
overlaps the kernel, on a core the rank does not otherwise use. It only helps when the read
releases the GIL (:mod:`om.data_retrieval_layer.hdf5_direct_read`); the rank's kernels release
it too (numba ``nogil``).
"""

import queue
import threading
from typing import Callable, Iterator, TypeVar

Item = TypeVar("Item")

_STEP_S = 0.1  # how often a producer blocked on a full queue checks that it is still wanted
_JOIN_TIMEOUT_S = 10.0


def read_ahead(produce: Callable[[], Iterator[Item]], depth: int, *,
               name: str = "om-read-ahead") -> Iterator[Item]:
    """Yields the items of ``produce()``, in order, produced up to ``depth`` items ahead.

    ``produce()`` is called, iterated and closed in a daemon thread: everything it touches
    (files, sockets) it must own. When the consumer stops early (``close()``, or the generator
    is dropped), the thread stops at its next item and the producer's ``finally`` runs there;
    the consumer waits up to 10 s for that.

    Args:
        produce: makes the iterator to run ahead (typically a generator function).
        depth: how many produced items may wait for the consumer (>= 1); at most ``depth + 2``
            items exist at once (waiting, being produced, being consumed).
        name: the thread's name.

    Raises:
        ValueError: when ``depth`` < 1.
        Exception: whatever ``produce()`` raised, re-raised when the consumer reaches it.
    """
    if depth < 1:
        raise ValueError(f"read-ahead depth must be at least 1, got {depth}")
    items: queue.Queue = queue.Queue(maxsize=depth)
    unwanted = threading.Event()

    def offer(entry: tuple[bool, object]) -> bool:
        while not unwanted.is_set():
            try:
                items.put(entry, timeout=_STEP_S)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        iterator = None
        outcome: BaseException | None = None
        try:
            iterator = iter(produce())
            for item in iterator:
                if not offer((True, item)):
                    break
            close = getattr(iterator, "close", None)
            if close is not None:  # the producer's clean-up runs here, in its own thread
                close()
        except BaseException as error:  # handed to the consumer, which re-raises it
            outcome = error
        offer((False, outcome))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            is_item, value = items.get()  # the producer always ends with (False, outcome)
            if not is_item:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        unwanted.set()
        thread.join(_JOIN_TIMEOUT_S)
