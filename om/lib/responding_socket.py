# SPDX-License-Identifier: GPL-3.0-or-later
"""The collecting rank's responding socket: a ROUTER that answers REQ clients.

Clients (the GUIs' reset button, CrystFEL's ``indexamajig --zmq-request=next``) send a
one-frame request on a REQ socket and wait for a one-frame reply. A ROUTER serves any number of
clients without blocking: each request arrives as ``[identity, b"", request]`` and is answered
with ``[identity, b"", reply]``, at once or later (a ``next`` request waits for the next hit).
"""

from typing import Callable

import zmq

from om.lib.problems import problems
from om.lib.zmq_sockets import bind_socket

RequestHandler = Callable[[bytes], bytes | None]
"""Takes the client's identity; returns the reply, or None to reply later with ``reply``."""


class RespondingSocket:
    """Binds a ROUTER socket and dispatches requests to handlers by name.

    Args:
        url: the ZeroMQ URL to bind.
        handlers: request (e.g. ``b"resetplots"``) to handler.

    Raises:
        OmConfigurationError: when the URL is malformed or cannot be bound.
    """

    def __init__(self, *, url: str, handlers: dict[bytes, RequestHandler]) -> None:
        self.handlers = dict(handlers)
        # ROUTER_MANDATORY reports replies to clients that left, so that their frame goes to
        # another client.
        self._socket, self.url = bind_socket(zmq.ROUTER, url, what="the responding socket",
                                             options={zmq.ROUTER_MANDATORY: 1})

    def serve(self, timeout_ms: int) -> int:
        """Waits up to ``timeout_ms`` for requests and dispatches every waiting one.

        Returns:
            The number of requests dispatched.
        """
        served = 0
        if not self._socket.poll(timeout_ms):
            return 0
        while True:
            try:
                parts = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return served
            served += 1
            if len(parts) != 3 or parts[1] != b"":
                problems.report("bad_request", f"request of {len(parts)} parts (not from REQ)")
                if len(parts) >= 2 and parts[1] == b"":
                    self.reply(parts[0], b"error: a request is one frame")
                continue
            identity, _, request = parts
            handler = self.handlers.get(request)
            if handler is None:
                shown = request[:40].decode("utf-8", "replace")
                problems.report("bad_request", f"unknown request {shown!r}")
                self.reply(identity, b"error: unknown request " + request[:40])
                continue
            answer = handler(identity)
            if answer is not None:
                self.reply(identity, answer)

    def reply(self, identity: bytes, payload: bytes) -> bool:
        """Sends one reply; returns False (and counts it) when the client is gone or stuck."""
        try:
            self._socket.send_multipart([identity, b"", payload], flags=zmq.NOBLOCK, copy=False)
            return True
        except (zmq.Again, zmq.ZMQError):
            problems.report("client_gone", "a client left (or stopped reading) before its reply")
            return False

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)
