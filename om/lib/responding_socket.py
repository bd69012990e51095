# SPDX-License-Identifier: GPL-3.0-or-later
"""The collecting rank's responding socket: a ROUTER that answers REQ clients.

Clients (the GUIs' reset button, CrystFEL's ``indexamajig --zmq-request=next``) send a
one-frame request on a REQ socket and wait for a one-frame reply. A ROUTER serves any number of
clients without blocking: each request arrives as ``[identity, b"", request]`` and is answered
with ``[identity, b"", reply]``, at once or later (a ``next`` request waits for the next hit).

The socket is reachable by anyone who can reach its port, so one client cannot take the
collecting rank's time or memory: :meth:`RespondingSocket.serve` handles at most
:data:`MAX_REQUESTS_PER_SERVE` requests per call (aggregation and broadcasts go on between two
calls, whatever floods in), at most :data:`REPLY_QUEUE` replies wait in the socket for one client
(a REQ client has one at a time; beyond, the reply is dropped and counted as ``client_gone``),
a request larger than 4 kB closes the client's connection, and a handler that raises is counted
(``request_error``) and answered with an error.
"""

from typing import Any, Callable

import zmq

from om.lib.problems import problems
from om.lib.zmq_sockets import bind_socket

RequestHandler = Callable[[bytes], bytes | None]
"""Takes the client's identity; returns the reply, or None to reply later with ``reply``."""

MAX_REQUESTS_PER_SERVE = 32
"""The most requests one :meth:`RespondingSocket.serve` call handles."""
REPLY_QUEUE = 4
"""Replies that may wait in the socket for one client (its send high-water mark)."""
_MAX_REQUEST_BYTES = 4096  # requests are short words; a larger one closes the connection
BAD_REQUEST = "bad_request"
"""Problem kind: a malformed or unknown request."""
CLIENT_GONE = "client_gone"
"""Problem kind: a client left, or stopped reading, before its reply."""
REQUEST_ERROR = "request_error"
"""Problem kind: a request's handler raised (the client gets an error reply)."""


class RespondingSocket:
    """Binds a ROUTER socket and dispatches requests to handlers by name.

    Args:
        url: the ZeroMQ URL to bind.
        handlers: request (e.g. ``b"resetplots"``) to handler.
        options: more socket options, e.g. :meth:`om.lib.curve.CurveServer.options`.

    Raises:
        OmConfigurationError: when the URL is malformed or cannot be bound.
    """

    def __init__(self, *, url: str, handlers: dict[bytes, RequestHandler],
                 options: dict[int, Any] | None = None) -> None:
        self.handlers = dict(handlers)
        # ROUTER_MANDATORY reports replies to clients that left, so that their frame goes to
        # another client.
        self._socket, self.url = bind_socket(zmq.ROUTER, url, what="the responding socket",
                                             options={zmq.ROUTER_MANDATORY: 1,
                                                      zmq.SNDHWM: REPLY_QUEUE,
                                                      zmq.MAXMSGSIZE: _MAX_REQUEST_BYTES,
                                                      **(options or {})})

    def serve(self, timeout_ms: int, max_requests: int = MAX_REQUESTS_PER_SERVE) -> int:
        """Waits up to ``timeout_ms`` for requests and dispatches up to ``max_requests`` of
        those waiting (the others wait for the next call).

        Returns:
            The number of requests dispatched.
        """
        if not self._socket.poll(timeout_ms):
            return 0
        for served in range(max_requests):
            try:
                parts = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return served
            try:
                self._dispatch(parts)
            except Exception as error:  # noqa: BLE001 - a request never ends the collecting rank
                problems.report(REQUEST_ERROR, f"request: {type(error).__name__}: "
                                f"{str(error)[:200]}")
        return max_requests

    def _dispatch(self, parts: list[bytes]) -> None:
        if len(parts) != 3 or parts[1] != b"":
            problems.report(BAD_REQUEST, f"request of {len(parts)} parts (not from REQ)")
            if len(parts) >= 2 and parts[1] == b"":
                self.reply(parts[0], b"error: a request is one frame")
            return
        identity, _, request = parts
        handler = self.handlers.get(request)
        if handler is None:
            shown = request[:40].decode("utf-8", "replace")
            problems.report(BAD_REQUEST, f"unknown request {shown!r}")
            self.reply(identity, b"error: unknown request " + request[:40])
            return
        try:
            answer = handler(identity)
        except Exception as error:  # noqa: BLE001 - a request never ends the collecting rank
            problems.report(REQUEST_ERROR, f"request {request.decode(errors='replace')!r}: "
                            f"{type(error).__name__}: {str(error)[:200]}")
            answer = b"error: the request failed on the monitor"
        if answer is not None:
            self.reply(identity, answer)

    def reply(self, identity: bytes, payload: bytes) -> bool:
        """Sends one reply; returns False (and counts it) when the client is gone or stuck."""
        try:
            self._socket.send_multipart([identity, b"", payload], flags=zmq.NOBLOCK, copy=False)
            return True
        except (zmq.Again, zmq.ZMQError):
            problems.report(CLIENT_GONE, "a client left (or stopped reading) before its reply")
            return False

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)
