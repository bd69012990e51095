# SPDX-License-Identifier: GPL-3.0-or-later
"""The collecting rank's ZeroMQ PUB socket: ``[tag, msgpack payload]`` messages.

A PUB socket drops messages for a subscriber whose queue is full, so a slow or frozen
subscriber never slows the monitor; the send high-water mark is small to bound memory.
"""

import zmq

from om.lib.serialization import pack
from om.lib.zmq_sockets import bind_socket


class DataBroadcaster:
    """Binds a PUB socket and sends tagged msgpack messages without ever blocking.

    Args:
        url: the ZeroMQ URL to bind, e.g. ``tcp://127.0.0.1:12321``.
        send_queue: messages queued per subscriber before the oldest are dropped.

    Raises:
        OmConfigurationError: when the URL is malformed or cannot be bound.
    """

    def __init__(self, *, url: str, send_queue: int = 8) -> None:
        self._socket, self.url = bind_socket(zmq.PUB, url, what="the data broadcast socket",
                                             options={zmq.SNDHWM: send_queue})

    def send(self, tag: str, payload: dict) -> None:
        """Sends ``[tag, msgpack(payload)]``; drops it for subscribers that are behind."""
        self.send_bytes(tag, pack(payload))

    def send_bytes(self, tag: str, payload: bytes) -> None:
        """Sends ``[tag, payload]`` (payload already msgpack); never blocks."""
        try:
            self._socket.send_multipart([tag.encode(), payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass

    def close(self, linger: float = 1.0) -> None:
        """Closes the socket, letting queued messages (the last broadcast) go for ``linger`` s."""
        self._socket.close(linger=int(linger * 1000))
