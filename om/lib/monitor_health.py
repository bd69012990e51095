# SPDX-License-Identifier: GPL-3.0-or-later
"""What the monitor says about its own health in omdata: lost processing ranks and restarts;
and a part that cannot go on asking for the whole monitor to be started again.

The collecting rank's MPI layer records each processing rank it lost (which, and how it knew);
``om_monitor.py -n N`` (:mod:`om.supervisor`) passes the number of times it restarted the MPI job
in the environment variable :data:`RESTARTS_VARIABLE`. The processing layer broadcasts both
(:meth:`MonitorHealth.as_data`).
"""

import os
import threading
from typing import Any

RESTARTS_VARIABLE = "OM_MONITOR_RESTARTS"
"""Environment variable: how many times the supervisor restarted the MPI job (0 or absent: the
first run)."""


class MonitorHealth:
    """Lost processing ranks and restarts of this run (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lost: dict[int, str] = {}
        self.restart_reason: str | None = None
        """Why a part of the collecting rank asked for the monitor to be started again."""
        try:
            self.restarts = max(0, int(os.environ.get(RESTARTS_VARIABLE, "0")))
        except ValueError:
            self.restarts = 0

    def rank_lost(self, rank: int, why: str) -> None:
        """Records that processing rank ``rank`` is gone, and why (e.g. "its process ended")."""
        with self._lock:
            self._lost[rank] = why

    def request_restart(self, why: str) -> None:
        """Asks for the whole monitor to be started again (e.g. the frame assembler process
        died: no frame would come any more); the MPI layer then ends the job with
        :data:`om.parallelization_layer.mpi.EXIT_RESTART`. Safe from any thread."""
        with self._lock:
            self.restart_reason = self.restart_reason or why

    def as_data(self) -> dict[str, Any]:
        """``{"processing_ranks_lost": {"rank": why}, "monitor_restarts": n}`` for omdata."""
        with self._lock:
            return {"processing_ranks_lost": {str(rank): why for rank, why in self._lost.items()},
                    "monitor_restarts": self.restarts}


health = MonitorHealth()
"""This process's record."""
