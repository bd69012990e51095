# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_monitor.py -n N SOURCE [...]``: runs ``mpiexec -disable-auto-cleanup -n N om_monitor.py
SOURCE [...]`` and starts it again when it dies.

A job that ends by itself with an exit code other than 0 (a file source read to its end) or 1
(a configuration error, or a source whose every event fails: starting again would fail again)
has died: its collecting rank or frame assembler was killed or crashed, or every processing
rank is gone (:data:`om.parallelization_layer.mpi.EXIT_RESTART`). It is started again after a
back-off of 0, 1, 2, 4, then 8 s; the number of restarts so far goes to the job in the
environment (:data:`om.lib.monitor_health.RESTARTS_VARIABLE`, broadcast in omdata as
``monitor_restarts``) and each restart is logged. A job that ran for 60 s or more was healthy:
the count of restarts in a row starts again. After 5 restarts in a row the supervisor gives up
with one message and exit code 1. SIGINT or SIGTERM stops the job (forwarded to ``mpiexec``,
which forwards it to every rank) and the supervisor, for good.

The job runs in a session of its own, so a Ctrl-C in the terminal reaches it once, through the
supervisor; it gets SIGTERM if the supervisor dies (``PR_SET_PDEATHSIG``), and SIGKILL (the whole
session) when it has not stopped 30 s after a stop signal.
"""

import argparse
import ctypes
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from om.lib.monitor_health import RESTARTS_VARIABLE

MAX_RESTARTS_IN_A_ROW = 5
HEALTHY_AFTER = 60.0  # s: a job that ran this long resets the count of restarts in a row
BACK_OFF = (0.0, 1.0, 2.0, 4.0, 8.0)  # s before the 1st, 2nd, ... restart in a row
STOP_TIMEOUT = 30.0  # s a stopped job has before it is killed (the ranks need at most ~12)
_FINAL_EXIT_CODES = (0, 1)  # the job finished, or starting it again would fail again
_PR_SET_PDEATHSIG = 1


def job_command(ranks: int, arguments: list[str]) -> list[str]:
    """``mpiexec -disable-auto-cleanup -n ranks om_monitor.py arguments`` with this
    environment's programs."""
    bin_dir = pathlib.Path(sys.executable).parent
    mpiexec = bin_dir / "mpiexec"
    monitor = bin_dir / "om_monitor.py"
    # Without -disable-auto-cleanup, mpiexec kills every rank when one exits before the end,
    # whatever its exit code (om.parallelization_layer.rank_guard).
    return [str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec") or "mpiexec",
            "-disable-auto-cleanup", "-n", str(ranks),
            str(monitor) if monitor.exists() else shutil.which("om_monitor.py") or "om_monitor.py",
            *arguments]


def _split_arguments(arguments: list[str]) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="om_monitor.py", add_help=False)
    parser.add_argument("-n", "--ranks", type=int, required=True)
    known, rest = parser.parse_known_args(arguments)
    if known.ranks < 2:
        parser.error("-n: the monitor needs at least 2 ranks (1 collecting, 1 or more "
                     "processing)")
    return known.ranks, rest


def _job_gets_sigterm_when_the_supervisor_dies() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _say(message: str) -> None:
    print(f"om_monitor.py: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Runs one MPI job after the other until one finishes, is stopped, or too many die.

    Args:
        command: the job's command line.
        back_off: seconds to wait before the 1st, 2nd, ... restart in a row (the last repeats).
        max_in_a_row: restarts in a row after which the supervisor gives up.
    """

    def __init__(self, command: list[str], *, back_off: tuple[float, ...] = BACK_OFF,
                 max_in_a_row: int = MAX_RESTARTS_IN_A_ROW) -> None:
        self._command = command
        self._back_off = back_off
        self._max_in_a_row = max_in_a_row
        # Signals received; a list, not an Event: appending takes no lock a second signal
        # could find held.
        self._signals: list[int] = []
        self.restarts = 0
        """How many times the job was started again."""

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stops the job (with ``signum``) and the supervisor; safe in a signal handler."""
        self._signals.append(signum)

    def run(self) -> int:
        """Supervises until the end; returns the exit code (the last job's, or 1 after too
        many restarts in a row)."""
        in_a_row = 0
        while True:
            started = time.monotonic()
            code = self._run_job()
            ran = time.monotonic() - started
            if self._signals or code in _FINAL_EXIT_CODES:
                return code
            if ran >= HEALTHY_AFTER:
                in_a_row = 0
            if in_a_row >= self._max_in_a_row:
                _say(f"error: the monitor died {in_a_row + 1} times in a row, each time within "
                     f"{HEALTHY_AFTER:.0f} s of its start (last exit code {code}); it is not "
                     "started again. See its messages above.")
                return 1
            delay = self._back_off[min(in_a_row, len(self._back_off) - 1)]
            in_a_row += 1
            self.restarts += 1
            _say(f"the monitor died (exit code {code}, after {ran:.1f} s): restart "
                 f"{self.restarts} ({in_a_row} in a row) in {delay:.0f} s")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self._signals:
                    return code
                time.sleep(0.05)

    def _run_job(self) -> int:
        job = subprocess.Popen(self._command,
                               env=dict(os.environ, **{RESTARTS_VARIABLE: str(self.restarts)}),
                               start_new_session=True,
                               preexec_fn=_job_gets_sigterm_when_the_supervisor_dies)
        forwarded_at: float | None = None
        while True:
            try:
                return job.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            if self._signals and forwarded_at is None:
                job.send_signal(self._signals[0])
                forwarded_at = time.monotonic()
            elif forwarded_at is not None and time.monotonic() - forwarded_at > STOP_TIMEOUT:
                # A rank that cannot stop (e.g. waiting for a dead peer): the stop is for good.
                _say(f"the monitor did not stop within {STOP_TIMEOUT:.0f} s: killing it")
                os.killpg(job.pid, signal.SIGKILL)
                return job.wait()


def main(arguments: list[str]) -> int:
    """``om_monitor.py -n N ...``: supervises ``mpiexec -n N om_monitor.py ...``; returns the
    exit code."""
    ranks, rest = _split_arguments(arguments)
    supervisor = Supervisor(job_command(ranks, rest))
    for signum in (signal.SIGINT, signal.SIGTERM):  # forwarded as they came
        signal.signal(signum, lambda number, _frame: supervisor.request_stop(number))
    return supervisor.run()
