# SPDX-License-Identifier: GPL-3.0-or-later
"""A bound PUSH socket, as detectors and receivers that push their images use (DECTRIS Stream
V2, MAX IV streaming-receiver): the senders of the simulation build their messages on it, and
:func:`run_series` sends a whole series from their command line."""

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from om.lib.stop_signals import on_stop_signals
from om.simulation.pacing import paced_indices

Message = bytes | list[bytes]
"""One ZeroMQ message: single-part bytes or a list of parts."""


class PushSender:
    """Binds a PUSH socket and sends messages to whichever client has room.

    Args:
        url: the URL to bind (``tcp://127.0.0.1:0`` picks a port: see :attr:`url`).
        send_timeout: how long a send may wait for a client with room, s (a real receiver may
            drop messages nobody takes; this sender waits, then raises ``zmq.Again``).

    Raises:
        zmq.ZMQError: when the URL cannot be bound.
    """

    def __init__(self, url: str, send_timeout: float = 30.0) -> None:
        # Its own context: close() terminates it, so zero-copy messages are sent (or dropped
        # after the linger) before their buffers can be freed.
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, 1000)
        self._socket.setsockopt(zmq.LINGER, 10_000)
        self._socket.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._socket.bind(url)
        self.url: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        """The bound URL (port resolved)."""
        self._clients = 0

    def wait_for_clients(self, count: int, timeout: float) -> bool:
        """Waits until ``count`` clients are connected (ZMTP handshake done), at most
        ``timeout`` s; returns whether they are."""
        deadline = time.monotonic() + timeout
        while self._clients < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._monitor.poll(remaining * 1000):
                return False
            event = recv_monitor_message(self._monitor)["event"]
            self._clients += 1 if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else -1
        return True

    def wait_for_clients_or_report(self, count: int, timeout: float) -> bool:
        """:meth:`wait_for_clients` with a line on the console before, and one on stderr when
        the clients did not come (then returns False)."""
        if count <= 0:
            return True
        print(f"sender: waiting for {count} clients on {self.url}", flush=True)
        if self.wait_for_clients(count, timeout):
            return True
        print("sender: error: the clients did not connect", file=sys.stderr, flush=True)
        return False

    def send(self, message: Message) -> None:
        """Sends one message, single- or multipart (``zmq.Again`` when no client takes it in
        time)."""
        parts = [message] if isinstance(message, (bytes, bytearray, memoryview)) else list(message)
        self._socket.send_multipart(parts, copy=False)

    def close(self, linger: float | None = None) -> None:
        """Closes the socket once the queued messages are sent (at most 10 s, or ``linger``
        s), and the context."""
        self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(None if linger is None else int(linger * 1000))
        self._context.term()


def run_series(arguments: argparse.Namespace,
               series: Callable[[Iterator[int]], Iterable[Message]]) -> int:
    """Binds a :class:`PushSender` on ``arguments.url``, waits for the clients, sends one
    series and closes; returns the exit code (1 when the clients did not come or stopped
    taking messages).

    Args:
        arguments: the options of :func:`om.simulation.sender_arguments.sender_parser`.
        series: given the image indices (0, 1, ... paced at ``arguments.rate``, at most
            ``arguments.frames``, fewer when SIGINT/SIGTERM stops the series), yields the
            messages to send: the series' first message, one per index, then the last one.
    """
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # (signals: main thread only)
        on_stop_signals(stop.set)
    sent = 0

    def counted() -> Iterator[int]:
        nonlocal sent
        for index in paced_indices(arguments.frames, arguments.rate, stop):
            yield index
            sent = index + 1

    sender = PushSender(arguments.url)
    linger = None
    try:
        if not sender.wait_for_clients_or_report(arguments.wait_for_clients,
                                                 arguments.wait_timeout):
            return 1
        started = time.monotonic()
        for message in series(counted()):
            sender.send(message)
        print(f"sender: sent {sent} images in {time.monotonic() - started:.1f} s", flush=True)
        return 0
    except zmq.Again:
        print("sender: error: no client took a message within 30 s", file=sys.stderr, flush=True)
        linger = 0.0  # nobody takes the queued messages: do not wait for them
        return 1
    finally:
        sender.close(linger)
