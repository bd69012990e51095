# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers and fixtures shared by the GUI tests: real ZeroMQ sockets on 127.0.0.1, windows
shown offscreen, and pixel checks on their grabs.

Import the fixtures into a test module (``from gui_helpers import context, publisher``) for
pytest to find them there. Like the test modules, this sets QT_QPA_PLATFORM=offscreen before
anything imports Qt.
"""

import os
import time
from typing import NamedTuple

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import zmq  # noqa: E402
from PyQt5 import QtCore  # noqa: E402

from om.graphical_interfaces.common import qimage_to_array  # noqa: E402

WAIT_MS = 10_000


# -- pixels ----------------------------------------------------------------------------------


def grab(window):
    """The window as an RGBA array, like a screenshot."""
    return qimage_to_array(window.grab().toImage())


def region(image, window, child):
    """The part of a grab of ``window`` covered by its descendant widget ``child``."""
    top_left = child.mapTo(window, QtCore.QPoint(0, 0))
    return image[top_left.y() : top_left.y() + child.height(), top_left.x() : top_left.x() + child.width()]


def near_color(pixels, color, tolerance=40):
    """Which pixels of an RGBA array are within ``tolerance`` of an RGB colour."""
    difference = np.abs(pixels[..., :3].astype(int) - np.array(color))
    return difference.max(axis=-1) <= tolerance


def count_color(image, color, tolerance=12):
    """How many pixels of an RGBA array are within ``tolerance`` of an RGB colour."""
    return int(np.count_nonzero(near_color(image, color, tolerance)))


# -- sockets ---------------------------------------------------------------------------------


class Publisher(NamedTuple):
    """A PUB socket bound on 127.0.0.1, where it is bound, and its ZeroMQ context."""

    socket: zmq.Socket
    url: str
    port: int
    context: zmq.Context


def pub_socket(context):
    """A PUB socket, not bound yet, that keeps room for a first message published again."""
    socket = context.socket(zmq.PUB)
    socket.setsockopt(zmq.LINGER, 0)
    # A PUB drops what does not fit under its high-water mark: room for the repeated
    # first message, so that a message sent once afterwards is never dropped.
    socket.setsockopt(zmq.SNDHWM, 20)
    return socket


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def publisher(context):
    """A PUB socket bound on a random port of 127.0.0.1, as a :class:`Publisher`."""
    socket = pub_socket(context)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield Publisher(socket, f"tcp://127.0.0.1:{port}", port, context)
    socket.close(linger=0)


@pytest.fixture
def router(context):
    """A ROUTER standing in for the monitor's responding socket: (socket, url)."""
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close(linger=0)


def publish_until(qtbot, socket, parts, condition, timeout=WAIT_MS, bind_port=None):
    """Publishes ``parts`` every 50 ms until ``condition()`` (the slow-joiner SUB socket).

    With ``bind_port``, first binds the unbound ``socket`` to that port of 127.0.0.1, trying
    again at each check while the old listener of a restarted monitor is still there.
    """
    last = [0.0]

    def check():
        if bind_port is not None and not socket.last_endpoint:
            try:
                socket.bind(f"tcp://127.0.0.1:{bind_port}")
            except zmq.ZMQError:  # the old listener may take a moment to go away
                return
        if time.monotonic() - last[0] >= 0.05:
            socket.send_multipart(parts)
            last[0] = time.monotonic()
        assert condition()

    qtbot.waitUntil(check, timeout=timeout)


def send_malformed(qtbot, socket, messages, subscriber, timeout=WAIT_MS):
    """Sends each of the malformed ``messages`` once, waiting until ``subscriber`` has counted
    it; returns the subscriber's counts of malformed messages by kind."""
    for number, parts in enumerate(messages, start=1):
        socket.send_multipart(parts)
        qtbot.waitUntil(lambda n=number: subscriber.num_malformed == n, timeout=timeout)
    return subscriber.malformed_counts()


# -- windows ---------------------------------------------------------------------------------


def window_factory(window_class, name):
    """A fixture, called ``name``, making shown ``window_class(url, **options)`` windows
    (refresh rate 20 Hz unless given) and shutting them down after the test."""

    @pytest.fixture(name=name)
    def make_window(qtbot):
        windows = []

        def make(url, **options):
            options.setdefault("refresh_rate", 20.0)
            window = window_class(url, **options)
            qtbot.addWidget(window)
            window.show()
            qtbot.waitExposed(window)
            windows.append(window)
            return window

        yield make
        for window in windows:
            window.shutdown()

    return make_window
