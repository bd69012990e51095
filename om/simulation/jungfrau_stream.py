# SPDX-License-Identifier: GPL-3.0-or-later
"""Sending JUNGFRAU frames in slsReceiver's ZeroMQ wire format.

One socket per module stream, bound like slsReceiver's streamer; each frame is a two-part
message (JSON header, raw little-endian uint16 image of 512 x 1024 pixels), and the end of an
acquisition is a single-part JSON message with ``"data": 0``. Header keys follow
slsDetectorPackage's JSON header format version 5 (see the project's reference notes).

The sockets are XPUB sockets: on the wire they are PUB sockets, and they also tell when a
subscriber has joined, so a sender can wait for the monitor instead of sleeping.
"""

import json
import time

import numpy as np
import zmq

MODULE_SHAPE = (512, 1024)
PACKETS_PER_MODULE = 128


class JungfrauStreamSender:
    """Binds one stream per module and sends frames in slsReceiver's format.

    Args:
        urls: the URLs to bind, module 0 first (e.g. ``tcp://127.0.0.1:30001``).
        send_queue: messages queued per subscriber before PUB drops them (as slsReceiver).

    Raises:
        zmq.ZMQError: when a URL cannot be bound.
    """

    def __init__(self, urls: list[str], send_queue: int = 1000) -> None:
        # Its own context: close() terminates it, so zero-copy frames are sent (or dropped after
        # the linger) before their arrays can be freed.
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        for url in urls:
            socket = self._context.socket(zmq.XPUB)
            socket.setsockopt(zmq.SNDHWM, send_queue)
            socket.setsockopt(zmq.LINGER, 1000)
            socket.bind(url)
            self._sockets.append(socket)
        self.urls = [socket.getsockopt_string(zmq.LAST_ENDPOINT) for socket in self._sockets]
        """The bound URLs (a ``*`` port resolved), module 0 first."""
        self._first_frame_number: int | None = None

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Waits until every stream has at least one subscriber, at most ``timeout`` s."""
        waiting = set(self._sockets)
        poller = zmq.Poller()
        for socket in self._sockets:
            poller.register(socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for socket, _ in poller.poll(remaining * 1000):
                message = socket.recv()
                if message[:1] == b"\x01":
                    waiting.discard(socket)
        return True

    def header(self, module: int, frame_number: int, timestamp_ticks: int,
               n_frames: int | None) -> dict:
        """Returns the JSON header (a dict) of one module's image of one frame."""
        if self._first_frame_number is None:
            self._first_frame_number = frame_number
        index = frame_number - self._first_frame_number
        progress = 100.0 * (index + 1) / n_frames if n_frames else 0.0
        return {
            "jsonversion": 5, "bitmode": 16, "fileIndex": 0,
            "detshape": [1, len(self._sockets)], "shape": [MODULE_SHAPE[1], MODULE_SHAPE[0]],
            "size": MODULE_SHAPE[0] * MODULE_SHAPE[1] * 2, "acqIndex": frame_number,
            "frameIndex": index, "progress": progress, "fname": "om_simulator", "data": 1,
            "completeImage": 1, "frameNumber": frame_number, "expLength": 100,
            "packetNumber": PACKETS_PER_MODULE, "detSpec1": 0, "timestamp": timestamp_ticks,
            "modId": module, "row": module, "column": 0, "detSpec2": 0, "detSpec3": 0,
            "detSpec4": 0, "detType": 3, "version": 1, "flipRows": 0, "quad": 0,
        }

    def send_frame(self, frame: np.ndarray, frame_number: int, timestamp_ticks: int,
                   n_frames: int | None = None) -> None:
        """Sends one frame: uint16 (n_modules * 512, 1024), a module to each stream."""
        for module, socket in enumerate(self._sockets):
            image = np.ascontiguousarray(frame[module * MODULE_SHAPE[0]:(module + 1) * MODULE_SHAPE[0]],
                                         dtype="<u2")
            header = json.dumps(self.header(module, frame_number, timestamp_ticks, n_frames))
            socket.send_multipart([header.encode(), image], copy=False)

    def send_module(self, module: int, frame: np.ndarray, frame_number: int,
                    timestamp_ticks: int) -> None:
        """Sends module ``module``'s image of one frame only (the other streams stay silent)."""
        rows = slice(module * MODULE_SHAPE[0], (module + 1) * MODULE_SHAPE[0])
        header = json.dumps(self.header(module, frame_number, timestamp_ticks, None))
        self._sockets[module].send_multipart(
            [header.encode(), np.ascontiguousarray(frame[rows], dtype="<u2")], copy=False)

    def send_parts(self, module: int, parts: list[bytes]) -> None:
        """Sends any message on module ``module``'s stream (e.g. a malformed one, in tests)."""
        self._sockets[module].send_multipart(parts)

    @property
    def modules(self) -> int:
        """How many module streams."""
        return len(self._sockets)

    def send_end_of_acquisition(self) -> None:
        """Sends the single-part end-of-acquisition message on every stream."""
        for module, socket in enumerate(self._sockets):
            header = {key: (0 if not isinstance(value, (str, list)) else value)
                      for key, value in self.header(module, 0, 0, None).items()}
            header.update({"data": 0, "fname": "", "shape": [0, 0], "detshape": [0, 0],
                           "jsonversion": 5, "bitmode": 16})
            socket.send(json.dumps(header).encode())

    def close(self) -> None:
        """Closes the sockets, letting queued messages go for up to 1 s, and the context."""
        for socket in self._sockets:
            socket.close()
        self._sockets = []
        self._context.term()
