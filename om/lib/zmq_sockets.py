# SPDX-License-Identifier: GPL-3.0-or-later
"""Binding the monitor's ZeroMQ sockets, with start-up errors that say which socket failed."""

import zmq

from om.lib.exceptions import OmConfigurationError


def bind_socket(socket_type: int, url: str, *, what: str, options: dict[int, int] | None = None
                ) -> tuple[zmq.Socket, str]:
    """Creates a socket of the process-wide context with linger 0, sets ``options``, binds it.

    Args:
        socket_type: e.g. ``zmq.PUB``.
        url: the URL to bind (``tcp://HOST:PORT``, ``tcp://HOST:*`` for a free port, ``ipc://``).
        what: what the socket is, for the error message (e.g. "the data broadcast socket").
        options: socket options to set before binding.

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
