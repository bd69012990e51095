# SPDX-License-Identifier: GPL-3.0-or-later
"""Stopping on SIGINT (Ctrl-C) and SIGTERM, the signals mpiexec forwards to every rank."""

import signal
from typing import Callable


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Calls ``callback()`` (which must only set flags) on SIGINT or SIGTERM.

    A signal that comes while ``callback`` still runs for an earlier one is ignored: Python
    runs the second handler inside the first, and a callback that holds a lock (e.g.
    ``threading.Event.set``) would then wait for itself forever.
    """
    running: list[bool] = []

    def _handler(_signum: int, _frame: object) -> None:
        if running:
            return
        running.append(True)
        try:
            callback()
        finally:
            running.clear()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
