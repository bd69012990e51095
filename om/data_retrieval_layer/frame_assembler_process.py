# SPDX-License-Identifier: GPL-3.0-or-later
"""The JUNGFRAU frame assembler in a process of its own, beside the collecting rank.

In the collecting rank's process the assembler thread and the main thread (MPI receive,
aggregation, broadcasts) share Python's GIL: measured at 300 frames/s, 0.53 and 0.43 ms of CPU
per frame, so one collecting rank followed about 1000 frames/s even with cores to spare
(docs/performance.md). Here the assembler runs in a child Python process started by the
collecting rank (``python -m om.data_retrieval_layer.frame_assembler_process``), with its own
GIL, and deals frames to the processing ranks exactly as in a thread (its
:class:`~om.data_retrieval_layer.frame_distribution.FrameDealer` binds the endpoint they
connect to).

The two processes talk over a ZeroMQ PAIR socket, in msgpack maps; it is an ``ipc://`` socket
in a folder only this user can enter (not a TCP port that any user of the host could reach first
and stop the assembler through):

* child → parent, once: ``{"endpoint": url}`` when the assembler is ready, or ``{"error":
  message}`` when it could not start (a malformed stream URL, a port that cannot be bound);
* child → parent, every 0.1 s while something changed, and a last time when it stops:
  ``{"problems": {kind: count added}, "frames_forwarded": n, "acquisitions_ended": m}``; the
  parent adds the problem counts to its own (the child logs each problem itself, on stderr);
* parent → child: ``b"stop"``.

A child that ends without being asked to (killed, or crashed, or its assembly thread ended) is
counted as ``assembler_process_ended``, logged, and reported to the ``on_unexpected_end``
callback, which stops the monitor: no frame comes after it (``om_monitor.py -n N`` starts
it again).

The dealing secret (:func:`~om.data_retrieval_layer.frame_distribution.new_secret`) goes to
the child through a pipe on its standard input, never on its command line (which every user
of the host can read in ``/proc``) nor over a socket.

The child runs in a session of its own and ignores SIGINT, so a Ctrl-C sent to the monitor's
process group does not reach it (the collecting rank decides when it stops); it stops on
SIGTERM, and asks Linux to send it SIGTERM when the collecting rank dies
(``PR_SET_PDEATHSIG``), so it never outlives the monitor. It gets no MPI environment: it must not join the MPI job.
"""

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import zmq

from om.data_retrieval_layer.jungfrau_frame_assembler import JungfrauFrameAssembler
from om.lib.exceptions import OmConfigurationError
from om.lib.problems import log_format as monitor_log_format
from om.lib.problems import problems
from om.lib.serialization import pack, unpack
from om.lib.zmq_sockets import bind_socket

logger = logging.getLogger("om")

_STATUS_PERIOD = 0.1  # s between two status messages of the child
_START_TIMEOUT = 60.0  # s for the child to start (imports numpy, zmq, binds)
_STOP_TIMEOUT = 5.0  # s for the child to stop before it is killed
_STOP = b"stop"
ASSEMBLER_PROCESS_ENDED = "assembler_process_ended"
"""Problem kind: the child ended without being asked to (no more frames)."""
_PR_SET_PDEATHSIG = 1
# Environment variables of MPI launchers: the child must not look like a rank of the job.
_MPI_ENVIRONMENT = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "MPICH_", "I_MPI_", "OMPI_")


class FrameAssemblerProcess:
    """A :class:`~om.data_retrieval_layer.jungfrau_frame_assembler.JungfrauFrameAssembler`
    run in a child process; the same interface (``start``, ``stop``, ``endpoint``,
    ``frames_forwarded``, ``acquisitions_ended``).

    Args:
        assembler: the assembler's keyword arguments (JSON-encodable: ``stream_urls``,
            ``distribution_host``, ``rows_per_stream``, ``assembly_timeout``,
            ``expected_receivers``).
        secret: the dealing secret (bytes), passed to the child on its standard input.
        log_format: the logging format of the child's lines (default: rank 0's,
            :func:`om.lib.problems.log_format`).
        on_unexpected_end: called with the reason, from a thread of this object, when the
            child ends without being asked to; it must only set flags or send a signal.

    Raises:
        OmConfigurationError: the assembler's own start-up error, or when the child does not
            start within 60 s.
    """

    def __init__(self, *, assembler: dict[str, Any], secret: bytes,
                 log_format: str | None = None,
                 on_unexpected_end: Callable[[str], None] | None = None) -> None:
        self._on_unexpected_end = on_unexpected_end
        self._folder = tempfile.mkdtemp(prefix="om_assembler_")  # mode 0700
        self._control, url = bind_socket(zmq.PAIR, f"ipc://{self._folder}/control",
                                         what="the frame assembler's control socket")
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith(_MPI_ENVIRONMENT)}
        settings = {"assembler": assembler,
                    "log_format": log_format or monitor_log_format(0),
                    "log_level": logging.getLogger().getEffectiveLevel()}
        # A session of its own: a Ctrl-C sent to the monitor's process group must not reach it
        # (it would die of KeyboardInterrupt while importing); the collecting rank stops it.
        self._child = subprocess.Popen([sys.executable, "-m", __name__, url, json.dumps(settings)],
                                       env=environment, stdin=subprocess.PIPE,
                                       start_new_session=True)
        try:
            self._child.stdin.write(secret.hex().encode() + b"\n")
            self._child.stdin.close()
        except OSError:  # the child ended at once: _wait_for_start says so
            pass
        self.frames_forwarded = 0
        self.acquisitions_ended = 0
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.endpoint: str = self._wait_for_start()
        except OmConfigurationError:
            self._end_child()
            raise

    def _wait_for_start(self) -> str:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._control.poll(100):
                message = unpack(self._control.recv())
                if "error" in message:
                    raise OmConfigurationError(str(message["error"]))
                return str(message["endpoint"])
            if self._child.poll() is not None:
                raise OmConfigurationError(
                    f"the frame assembler process ended at start-up (exit code "
                    f"{self._child.returncode}); see its messages above")
        raise OmConfigurationError(
            f"the frame assembler process did not start within {_START_TIMEOUT:.0f} s")

    def start(self) -> None:
        """Starts taking the child's status messages (the child assembles already)."""
        self._thread = threading.Thread(target=self._take_status, name="om-assembler-status",
                                        daemon=True)
        self._thread.start()

    def _take_status(self) -> None:
        # The only user of the control socket after start-up (ZeroMQ sockets are not
        # thread-safe): it also sends the stop request.
        stop_sent = False
        try:
            while True:
                if self._stop_requested.is_set() and not stop_sent:
                    stop_sent = _send_or_drop(self._control, _STOP)
                if self._control.poll(50):
                    self._on_status(self._control.recv())
                elif self._child.poll() is not None:
                    if not self._stop_requested.is_set():
                        reason = (f"the frame assembler process ended by itself (exit code "
                                  f"{self._child.returncode}): no more frames will come")
                        problems.report(ASSEMBLER_PROCESS_ENDED, reason)
                        if self._on_unexpected_end is not None:
                            self._on_unexpected_end(reason)
                    return
        except zmq.ZMQError:  # the socket closed under it: stop() gave up waiting
            return

    def _on_status(self, payload: bytes) -> None:
        try:
            status = unpack(payload)
            problems.merge(status.get("problems") or {})
            self.frames_forwarded = int(status.get("frames_forwarded", self.frames_forwarded))
            self.acquisitions_ended = int(status.get("acquisitions_ended",
                                                     self.acquisitions_ended))
        except Exception as error:  # noqa: BLE001 - the status thread notices the child's end
            problems.report("bad_rank_message", f"frame assembler process: "
                            f"{type(error).__name__}: {str(error)[:200]}")

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stops the child (its last status is taken first); kills it after ``timeout`` s.
        Idempotent."""
        self._stop_requested.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._end_child(timeout)

    def _end_child(self, timeout: float = _STOP_TIMEOUT) -> None:
        if self._child.poll() is None:
            self._child.terminate()
            try:
                self._child.wait(timeout)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        if not self._control.closed:
            self._control.close(0)
        shutil.rmtree(self._folder, ignore_errors=True)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it has ended (0: stopped cleanly), else None."""
        return self._child.returncode


def _send_or_drop(socket: zmq.Socket, payload: bytes) -> bool:
    """Sends without blocking (a PAIR socket whose peer has gone would block); returns
    whether the message was queued."""
    try:
        socket.send(payload, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def _send_status(control: zmq.Socket, assembler: JungfrauFrameAssembler,
                 unsent: dict[str, int]) -> None:
    """Sends the child's status message (see the module doc) to the parent."""
    _send_or_drop(control, pack({"problems": unsent,
                                 "frames_forwarded": assembler.frames_forwarded,
                                 "acquisitions_ended": assembler.acquisitions_ended}))


def _die_with_parent() -> None:
    """Asks Linux for SIGTERM when the parent dies (no-op where prctl is missing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """The child: ``python -m om.data_retrieval_layer.frame_assembler_process URL SETTINGS``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    _die_with_parent()
    url, settings = argv[0], json.loads(argv[1])
    secret = bytes.fromhex(sys.stdin.readline().strip())
    logging.basicConfig(level=settings["log_level"], format=settings["log_format"],
                        stream=sys.stderr)
    # A plain flag, no lock: a handler that took a lock (threading.Event.set) deadlocked when
    # a second SIGTERM came while the first one's handler held it (seen in 1 run of 6).
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    # One libzmq I/O thread per stream: the TCP receive of one 1M frame's module images cost
    # 0.6 ms of one I/O thread (measured at 400 frames/s), which alone would bound the
    # assembler near 1600 frames/s.
    context = zmq.Context.instance(io_threads=max(1, len(settings["assembler"]["stream_urls"])))
    control = context.socket(zmq.PAIR)
    control.setsockopt(zmq.LINGER, 1000)
    control.connect(url)
    try:
        assembler = JungfrauFrameAssembler(**settings["assembler"], secret=secret)
    except OmConfigurationError as error:
        control.send(pack({"error": str(error)}))
        control.close()
        return 1
    control.send(pack({"endpoint": assembler.endpoint}))
    assembler.start()
    last: tuple[int, int] = (0, 0)
    code = 0
    while not stopping:
        if control.poll(int(_STATUS_PERIOD * 1000)) and control.recv() == _STOP:
            break
        if os.getppid() != parent:  # it died before PR_SET_PDEATHSIG took effect
            break
        if not assembler.alive:  # reported by the thread; the parent counts our end
            code = 1
            break
        counters = (assembler.frames_forwarded, assembler.acquisitions_ended)
        unsent = problems.take_unsent()
        if unsent or counters != last:
            _send_status(control, assembler, unsent)
            last = counters
    assembler.stop()
    _send_status(control, assembler, problems.take_unsent())
    control.close()  # lingers until the last status is sent (at most 1 s)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
