# SPDX-License-Identifier: GPL-3.0-or-later
"""Binding the monitor's ZeroMQ sockets, with start-up errors that say which socket failed,
and connecting its receiving sockets with a message size cap."""

import time

from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from om.lib.problems import ProblemCounter, problems

STREAM_DISCONNECTED = "stream_disconnected"
"""Problem kind: libzmq dropped a receiving socket's connection for a protocol error (a message
part larger than the cap) and did not connect again; the monitor did."""

from om.lib.exceptions import OmConfigurationError


def bind_socket(socket_type: int, url: str, *, what: str, options: dict[int, Any] | None = None
                ) -> tuple[zmq.Socket, str]:
    """Creates a socket of the process-wide context with linger 0, sets ``options``, binds it.

    Args:
        socket_type: e.g. ``zmq.PUB``.
        url: the URL to bind (``tcp://HOST:PORT``, ``tcp://HOST:*`` for a free port, ``ipc://``).
        what: what the socket is, for the error message (e.g. "the data broadcast socket").
        options: socket options to set before binding (ints, or bytes such as CURVE keys).

    Returns:
        The socket and the URL it is bound at (a ``*`` port resolved).

    Raises:
        OmConfigurationError: when the URL is malformed or cannot be bound.
    """
    socket = zmq.Context.instance().socket(socket_type)
    socket.setsockopt(zmq.LINGER, 0)
    for option, value in (options or {}).items():
        socket.setsockopt(option, value)
    try:
        socket.bind(url)
    except zmq.ZMQError as error:
        socket.close(0)
        raise OmConfigurationError(f"cannot bind {what} at {url!r}: {error}")
    return socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)


class SizeLimitedConnection:
    """Connects a receiving socket to one URL with ``ZMQ_MAXMSGSIZE`` set, and connects it
    again when libzmq gives the connection up.

    libzmq ends a connection whose peer sends a message part larger than ``ZMQ_MAXMSGSIZE``
    before allocating it, and treats that as a protocol error: unlike a connection the peer
    closed, it does *not* connect again by itself, so one oversized message would silently cut
    the monitor off its source for good. :meth:`check` (called in the socket's receive loop,
    from the socket's thread) watches the socket's connection events: a disconnection that
    libzmq does not follow with a new attempt within :data:`GIVE_UP_S` is made good by hand and
    counted as ``stream_disconnected``. Disconnections libzmq recovers from itself (the peer
    restarted) are left to it: connecting by hand would drop the messages already queued.

    Args:
        socket: a new receiving socket (SUB, PULL...), not connected yet.
        url: the URL to connect to.
        max_bytes: the largest message part accepted, bytes.
        what: what the URL is, for the log line (e.g. "the detector stream").
        counter: where disconnections are counted (the process-wide counter by default).

    Raises:
        zmq.ZMQError: when the URL cannot be connected (the caller names it).
    """

    GIVE_UP_S = 0.5
    """How long after a disconnection without a new attempt libzmq is taken to have given up, s
    (it schedules its own attempt at once)."""

    def __init__(self, socket: zmq.Socket, url: str, *, max_bytes: int, what: str,
                 counter: ProblemCounter = problems) -> None:
        self._socket = socket
        self._counter = counter
        self._url = url
        self._what = what
        self._max_bytes = int(max_bytes)
        self._dropped_at: float | None = None
        socket.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)
        self._monitor: zmq.Socket | None = socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED
            | zmq.EVENT_CONNECTED)
        try:
            socket.connect(url)
        except zmq.ZMQError:
            self.close()
            raise

    def check(self) -> int:
        """Connects again when libzmq gave a connection up; returns 1 when it did so (counted
        as ``stream_disconnected``), else 0."""
        if self._monitor is None:
            return 0
        now = time.monotonic()
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self._dropped_at = self._dropped_at or now
            else:  # libzmq is connecting again by itself
                self._dropped_at = None
        if self._dropped_at is None or now - self._dropped_at < self.GIVE_UP_S:
            return 0
        self._dropped_at = None
        self._counter.report(STREAM_DISCONNECTED, (
            f"{self._what} {self._url}: connection dropped by ZeroMQ (a message part larger "
            f"than {self._max_bytes} bytes, or another protocol error): connecting again"))
        try:
            self._socket.disconnect(self._url)
        except zmq.ZMQError:  # already forgotten by libzmq after the protocol error
            pass
        self._socket.connect(self._url)
        return 1

    def close(self) -> None:
        """Stops watching (the socket itself is the caller's to close); idempotent."""
        if self._monitor is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:  # the socket was closed first
                pass
            self._monitor.close(0)
            self._monitor = None
