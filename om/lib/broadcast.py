# SPDX-License-Identifier: GPL-3.0-or-later
"""The collecting rank's broadcast socket: ``[tag, msgpack payload]`` messages.

The socket is a ZeroMQ XPUB: to its subscribers (SUB sockets: the GUIs, indexamajig) it is a
PUB socket, and it also tells the monitor which tags they subscribed to. A message nobody
subscribed to is then not built at all: an assembled frame or a CrystFEL payload is megabytes
of copying for the collecting rank.

A PUB socket drops messages for a subscriber whose queue is full, so a slow or frozen
subscriber never slows the monitor; the send high-water mark is small to bound memory.
"""

from typing import Any

import zmq

from om.lib.serialization import pack
from om.lib.zmq_sockets import bind_socket

# Subscriptions tracked at most; beyond that (only a misbehaving peer subscribes to so many
# prefixes) every tag counts as wanted, as if the monitor could not tell. Below ZeroMQ's receive
# high-water mark (1000 messages), beyond which the socket drops subscription messages.
_MAX_SUBSCRIPTIONS = 256
# Subscriptions are tag prefixes of a few bytes: a larger message ends its connection in libzmq.
_MAX_SUBSCRIPTION_BYTES = 4096


class DataBroadcaster:
    """Binds an XPUB socket and sends tagged msgpack messages without ever blocking.

    Args:
        url: the ZeroMQ URL to bind, e.g. ``tcp://127.0.0.1:12321``.
        send_queue: messages queued per subscriber before the oldest are dropped.
        options: more socket options, e.g. :meth:`om.lib.curve.CurveServer.options`.

    Raises:
        OmConfigurationError: when the URL is malformed or cannot be bound.
    """

    def __init__(self, *, url: str, send_queue: int = 8,
                 options: dict[int, Any] | None = None) -> None:
        self._socket, self.url = bind_socket(zmq.XPUB, url, what="the data broadcast socket",
                                             options={zmq.SNDHWM: send_queue,
                                                      zmq.MAXMSGSIZE: _MAX_SUBSCRIPTION_BYTES,
                                                      **(options or {})})
        self._prefixes: set[bytes] = set()
        self._overflowed = False

    def wants(self, tag: str) -> bool:
        """Whether a connected subscriber subscribed to a prefix of ``tag`` (ZeroMQ's rule):
        a message with this tag would reach someone, so it is worth building."""
        self._read_subscriptions()
        encoded = tag.encode()
        return self._overflowed or any(encoded.startswith(prefix) for prefix in self._prefixes)

    def _read_subscriptions(self) -> None:
        # XPUB (not verbose) reports a prefix's first subscription (b"\x01" + prefix) and,
        # when its last subscriber unsubscribes or disconnects, the unsubscription (b"\x00" +
        # prefix). Anything else a peer may send is ignored.
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                if len(self._prefixes) < _MAX_SUBSCRIPTIONS:
                    self._prefixes.add(message[1:])
                else:
                    self._overflowed = True
            elif message[:1] == b"\x00":
                self._prefixes.discard(message[1:])

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
