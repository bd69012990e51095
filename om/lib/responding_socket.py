# SPDX-License-Identifier: GPL-3.0-or-later
"""The collecting rank's responding socket: a ROUTER that answers REQ clients.

Clients (the GUIs' reset button, CrystFEL's ``indexamajig --zmq-request=next``) send a
one-frame request on a REQ socket and wait for a one-frame reply. A ROUTER serves any number of
clients without blocking: each request arrives as ``[identity, b"", request]`` and is answered
with ``[identity, b"", reply]``.
"""

from typing import Callable

import zmq

from om.lib.exceptions import OmConfigurationError
from om.lib.problems import problems


class RespondingSocket:
    """Binds a ROUTER socket and dispatches requests to handlers by name.

    Args:
        url: the ZeroMQ URL to bind.
        handlers: request name (e.g. ``b"resetplots"``) to a function returning the reply bytes.

    Raises:
        OmConfigurationError: when the URL is malformed or cannot be bound.
    """

    def __init__(self, *, url: str, handlers: dict[bytes, Callable[[], bytes]]) -> None:
        self._handlers = handlers
        self._socket = zmq.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            self._socket.bind(url)
        except zmq.ZMQError as error:
            self._socket.close(0)
            raise OmConfigurationError(f"cannot bind the responding socket at {url!r}: {error}")
        self.url = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self, timeout_ms: int) -> int:
        """Waits up to ``timeout_ms`` for requests and answers every waiting one.

        Returns:
            The number of requests answered.
        """
        answered = 0
        if not self._socket.poll(timeout_ms):
            return 0
        while True:
            try:
                parts = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return answered
            if len(parts) != 3 or parts[1] != b"":
                problems.report("bad_request", f"request of {len(parts)} parts (not from REQ)")
                continue
            identity, _, request = parts
            handler = self._handlers.get(request)
            if handler is None:
                shown = request[:40].decode("utf-8", "replace")
                problems.report("bad_request", f"unknown request {shown!r}")
                reply = b"error: unknown request"
            else:
                reply = handler()
            try:
                self._socket.send_multipart([identity, b"", reply], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                problems.report("bad_request", "a client left before its reply")
            answered += 1

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)
