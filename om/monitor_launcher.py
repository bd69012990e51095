# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``om_monitor.py`` command: catches the stop signals before anything else is imported.

A SIGINT or SIGTERM that reaches a rank while it starts (importing, starting MPI, reading the
calibration files, compiling the kernels) must not kill it with a KeyboardInterrupt: ``mpiexec``
would then SIGKILL every other rank. So the command's first act is to note such signals; the
monitor stops cleanly as soon as it has started (:func:`om.monitor.main`).
"""

import sys
import threading

# om.lib.stop_signals imports the standard library only: it costs no start-up time.
from om.lib.stop_signals import on_stop_signals


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``om_monitor.py``; returns the exit code."""
    early_stop = threading.Event()
    on_stop_signals(early_stop.set)
    from om.monitor import main as monitor_main

    return monitor_main(argv, early_stop=early_stop)


if __name__ == "__main__":
    sys.exit(main())
