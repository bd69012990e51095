# SPDX-License-Identifier: GPL-3.0-or-later
"""The rank guard: the process ``mpiexec`` starts runs the rank as its child.

MPICH's ``mpiexec`` (Hydra) kills every rank of the job with SIGKILL as soon as one rank ends
before the others: whatever its exit code by default, and even with ``-disable-auto-cleanup``
when it dies of a signal (measured with the ``mpich`` 5.0.2 wheel: the other ranks get SIGUSR1,
then SIGKILL, within 0.1 s); MPICH's fault tolerance (``MPIR_CVAR_ENABLE_FT=1``) fails an
assertion in ``MPI_Init`` on its ch4 device. With ``-disable-auto-cleanup`` a rank that merely
*exits* leaves the others running (``om_monitor.py -n N`` passes it,
:mod:`om.supervisor`). So ``om_monitor.py``, when started by
``mpiexec``, starts the real rank as a child process (same command, same environment, the PMI
file descriptor passed on, so the child is the MPI process) and waits for it: a rank killed by a
signal is then, for Hydra, a guard that exits with code 128 + the signal's number, and the
monitor goes on without it (:mod:`om.lib.rank_liveness`). The guard costs one
small Python process per rank (standard library only).

Signals: the rank ignores SIGINT and SIGTERM until the monitor has installed its own handlers
(a signal during the interpreter's start-up would otherwise kill it with a KeyboardInterrupt);
the guard forwards each to the rank once the rank catches it (``SigCgt`` in
``/proc/PID/status``), not before, when it would be lost. The guard ignores SIGUSR1, which
``mpiexec -disable-auto-cleanup`` sends every rank when one has ended (its default action would
end the guard). The rank gets SIGKILL when its guard dies (``PR_SET_PDEATHSIG``), so no rank
outlives its job.

A rank killed during the start-up is another matter: the others wait for it in the start-up's
collective calls, which would never end. The rank tells its guard, through a pipe, when its
start-up is over (:func:`tell_the_guard_the_rank_started`); a guard whose rank was killed before
that kills itself with the same signal, and ``mpiexec`` then ends the whole job (which
``om_monitor.py -n N`` starts again).
"""

import ctypes
import os
import signal
import subprocess
import sys

RANK_PROCESS = "OM_RANK_PROCESS"
"""Environment variable set in the rank's process (the guard's child)."""
STARTED_FD = "OM_RANK_STARTED_FD"
"""Environment variable: the file descriptor the rank writes one byte to once it has started
(:func:`tell_the_guard_the_rank_started`)."""
_PR_SET_PDEATHSIG = 1
_LOOK_PERIOD = 0.1  # s between two looks at whether the rank catches a signal to forward
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def started_by_mpiexec() -> bool:
    """Whether this process is a rank of an MPI job (``mpiexec`` set its PMI environment) and
    not yet the guard's child."""
    under_mpiexec = any(key in os.environ for key in ("PMI_RANK", "PMI_FD", "PMIX_RANK"))
    return under_mpiexec and RANK_PROCESS not in os.environ


def _prepare_rank_process() -> None:
    """In the child, before exec: stop signals ignored until the monitor handles them; SIGKILL
    when the guard dies."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (False when it cannot be seen)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def tell_the_guard_the_rank_started() -> None:
    """Called by the rank once its start-up is over (no-op without a guard)."""
    fd = os.environ.pop(STARTED_FD, None)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), b"s")
        os.close(int(fd))
    except OSError:
        pass


def _started(reader: int) -> bool:
    """Whether the rank wrote to the pipe (non-blocking)."""
    try:
        return os.read(reader, 1) == b"s"
    except BlockingIOError:
        return False


def run_guarded(argv: list[str]) -> int:
    """Runs ``python -m om.monitor_launcher argv`` as the rank and waits for it.

    Returns:
        The rank's exit code, or 128 + the signal's number when a signal killed it (an exit,
        not a death by signal, for ``mpiexec``).
    """
    pending: list[int] = []  # signals to forward (list.append takes no lock)
    signal.signal(signal.SIGINT, lambda signum, _frame: pending.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, _frame: pending.append(signum))
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    pmi_fd = os.environ.get("PMI_FD")
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    rank = subprocess.Popen(
        [sys.executable, "-m", "om.monitor_launcher", *argv],
        env=dict(os.environ, **{RANK_PROCESS: "1", STARTED_FD: str(writer)}),
        pass_fds=[writer, *([int(pmi_fd)] if pmi_fd and pmi_fd.isdigit() else [])],
        preexec_fn=_prepare_rank_process)
    os.close(writer)
    started = False
    while True:
        try:
            code = rank.wait(timeout=_LOOK_PERIOD)
            break
        except subprocess.TimeoutExpired:
            pass
        started = started or _started(reader)
        while pending and _catches(rank.pid, pending[0]):
            try:
                rank.send_signal(pending.pop(0))
            except ProcessLookupError:
                pass
    if code >= 0:
        return code
    started = started or _started(reader)
    name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
    print(f"om_monitor.py: rank {os.environ.get('PMI_RANK', '?')} (pid {rank.pid}) was killed "
          f"by signal {-code} ({name})"
          + ("" if started else " during its start-up: the whole job ends"),
          file=sys.stderr, flush=True)
    if not started:
        os.kill(os.getpid(), signal.SIGKILL)  # a guard killed by a signal: mpiexec kills all
    # Flushing stdio is all the guard has to do; no Python-level clean-up that could block.
    return 128 - code
