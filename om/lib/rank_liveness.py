# SPDX-License-Identifier: GPL-3.0-or-later
"""Which ranks of the job are gone: their processes, watched by process identity.

MPICH gives no way to learn that a peer died (its fault tolerance does not run on the ch4 device
of the ``mpich`` wheel, :mod:`om.parallelization_layer.rank_guard`), and a receive posted for a
dead peer simply never completes. So every rank tells the others, at start-up, who it is: host,
process id and the process's start time (the pair identifies the process even after its id is
reused). A rank then looks, twice a second, whether the processes of the ranks it depends on
still run. That costs one ``stat`` of ``/proc`` per rank and needs no messages, so a rank busy
in a long computation is never taken for dead. A rank on another host cannot be seen this way:
it is never declared gone (its loss is not detected).
"""

import dataclasses
import socket
import time
from typing import Any

import psutil

_CHECK_PERIOD = 0.5  # s between two looks


@dataclasses.dataclass(frozen=True)
class RankProcess:
    """The process of one rank.

    Attributes:
        rank: the MPI rank.
        host: the host name (``socket.gethostname()``).
        pid: the process id.
        started: the process's start time (s since the epoch, as ``psutil`` gives it).
    """

    rank: int
    host: str
    pid: int
    started: float

    @classmethod
    def of_this_process(cls, rank: int) -> "RankProcess":
        """This process, as rank ``rank``."""
        return cls(rank, socket.gethostname(), psutil.Process().pid,
                   psutil.Process().create_time())

    def to_message(self) -> dict[str, Any]:
        """A msgpack-encodable map (:meth:`from_message` reads it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "RankProcess":
        """Reads :meth:`to_message`'s map.

        Raises:
            KeyError, TypeError, ValueError: on a malformed map.
        """
        return cls(int(message["rank"]), str(message["host"]), int(message["pid"]),
                   float(message["started"]))

    def why_gone(self) -> str | None:
        """Why the process is known to be gone, or None while it runs (or runs on another
        host, where it cannot be seen)."""
        if self.host != socket.gethostname():
            return None
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started) > 0.01:
                return f"its process (pid {self.pid}) ended"  # the id was reused since
            if process.status() == psutil.STATUS_ZOMBIE:
                return f"its process (pid {self.pid}) ended"
        except psutil.NoSuchProcess:
            return f"its process (pid {self.pid}) ended"
        except psutil.Error:  # e.g. access denied: it exists
            return None
        return None


class RankWatch:
    """Looks, at most every 0.5 s, whether the processes of some ranks still run.

    Args:
        processes: the ranks to watch.
    """

    def __init__(self, processes: list[RankProcess]) -> None:
        self._watched = {process.rank: process for process in processes}
        self._next_look = 0.0

    def newly_gone(self) -> dict[int, str]:
        """The watched ranks found gone since the last call (rank: why), each reported once;
        {} when the last look was less than 0.5 s ago."""
        now = time.monotonic()
        if now < self._next_look:
            return {}
        self._next_look = now + _CHECK_PERIOD
        gone = {}
        for rank, process in list(self._watched.items()):
            why = process.why_gone()
            if why is not None:
                gone[rank] = why
                del self._watched[rank]
        return gone
