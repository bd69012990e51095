# SPDX-License-Identifier: GPL-3.0-or-later
"""Stopping on SIGINT (Ctrl-C) and SIGTERM, the signals mpiexec forwards to every rank."""

import signal
from typing import Callable


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Calls ``callback()`` (which must only set flags) on SIGINT or SIGTERM."""

    def _handler(_signum: int, _frame: object) -> None:
        callback()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
