# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether MPICH moves large messages between ranks of one host without the sender's help.

MPICH (the ``mpich`` wheel the monitor installs; ch4 device) sends a large message between two
processes of one host in one of two ways:

* **single copy** (CMA, Linux cross-memory attach): the receiver copies the bytes straight out
  of the sender's memory (``process_vm_readv``). The sender posts ``Isend`` and goes on.
* **through shared-memory cells**, in pieces of tens of kB, each piece moved only while *both*
  ranks are inside an MPI call. A processing rank that posts a 4 MB frame and goes back to its
  numba kernels moves one piece per event: measured here, with CMA disabled, the monitor fell
  from ~600 to ~30 events/s, the collecting rank spinning in ``Recv`` at 100 % of a core.

MPICH turns CMA off at start-up unless the Yama security module lets any process of the user
trace the others (``/proc/sys/kernel/yama/ptrace_scope`` is ``0``; Ubuntu's default is ``1``),
or when ``MPIR_CVAR_CH4_CMA_ENABLE=0`` is set (needed in Docker containers, whose default
seccomp profile refuses ``process_vm_readv``). This module applies the same rule so that a
processing rank knows when it must drive its large sends to completion itself
(:mod:`om.parallelization_layer.mpi`). Source: MPICH ``src/mpid/ch4/shm/ipc/cma`` (the
``MPIR_CVAR_CH4_CMA_ENABLE`` variable and the Yama check at initialization); Yama:
https://www.kernel.org/doc/html/latest/admin-guide/LSM/Yama.html.
"""

import os

YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
_CMA_VARIABLES = ("MPIR_CVAR_CH4_CMA_ENABLE", "MPICH_CH4_CMA_ENABLE")


def large_sends_need_the_sender(library_version: str, environment: dict[str, str] | None = None,
                                ptrace_scope_file: str = YAMA_PTRACE_SCOPE) -> bool:
    """Whether large intranode sends complete only while the sending rank calls MPI.

    Args:
        library_version: ``MPI.Get_library_version()``; only MPICH's rule is known, any other
            library is assumed to copy large messages by itself (Open MPI also uses CMA).
        environment: the environment MPI started with (default: ``os.environ``).
        ptrace_scope_file: Yama's setting (absent when Yama is not active: then CMA works).

    Returns:
        True for MPICH with CMA off (Yama's ptrace scope not 0, or CMA disabled by variable).
    """
    if "MPICH" not in library_version:
        return False
    environment = os.environ if environment is None else environment
    for name in _CMA_VARIABLES:
        if environment.get(name, "").strip() in ("0", "no", "false"):
            return True
    try:
        with open(ptrace_scope_file, "rb") as handle:
            scope = handle.read(1)
    except OSError:  # no Yama: nothing forbids CMA
        return False
    return scope != b"0"
