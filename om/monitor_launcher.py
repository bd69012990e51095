# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``om_monitor.py`` command: catches the stop signals before anything else is imported.

A SIGINT or SIGTERM that reaches a rank while it starts (importing, starting MPI, reading the
calibration files, compiling the kernels) must not kill it with a KeyboardInterrupt: ``mpiexec``
would then SIGKILL every other rank. So the command's first act is to note such signals; the
monitor stops cleanly as soon as it has started (:func:`om.monitor.main`).

Started by ``mpiexec``, the command first becomes the rank's guard and runs the rank as its
child (:mod:`om.parallelization_layer.rank_guard`): a rank killed by a signal then does not make
``mpiexec`` kill the others. Started as ``om_monitor.py -n N ...``, it supervises ``mpiexec -n N
om_monitor.py ...`` and starts it again when it dies (:mod:`om.supervisor`).
"""

import os
import sys
import threading

# om.lib.stop_signals imports the standard library only: it costs no start-up time.
from om.lib.stop_signals import on_stop_signals
from om.parallelization_layer.rank_guard import RANK_PROCESS, run_guarded, started_by_mpiexec


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``om_monitor.py``; returns the exit code."""
    arguments = sys.argv[1:] if argv is None else argv
    if started_by_mpiexec():
        return run_guarded(arguments)
    if RANK_PROCESS not in os.environ and _asks_for_supervision(arguments):
        from om.supervisor import main as supervisor_main

        return supervisor_main(arguments)
    early_stop = threading.Event()
    on_stop_signals(early_stop.set)
    from om.monitor import main as monitor_main

    return monitor_main(arguments, early_stop=early_stop)


def _asks_for_supervision(arguments: list[str]) -> bool:
    """Whether the command line has ``-n N`` / ``--ranks N`` (outside ``mpiexec``)."""
    return any(argument in ("-n", "--ranks") or argument.startswith("--ranks=")
               for argument in arguments)


if __name__ == "__main__":
    sys.exit(main())
