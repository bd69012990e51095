# SPDX-License-Identifier: GPL-3.0-or-later
"""MPI parallelization: one collecting rank, every other rank a processing rank.

Every message between ranks is a msgpack byte buffer sent with mpi4py's buffer interface
(``Send``/``Recv`` of ``MPI.BYTE``), never mpi4py's pickle-based lower-case calls. A result's
large arrays (the calibrated frame) go out of band, as messages of their own sent just before
the result, straight from and into numpy arrays (:func:`om.lib.serialization.pack_out_of_band`):
packing a 4 MB frame into the payload and unpacking it again cost more than the frame's share
of peak finding. Where MPI has no single-copy transfers (MPICH without CMA), such an array goes
through a shared-memory slot of the processing rank instead
(:mod:`om.parallelization_layer.shared_result_buffers`). The
collecting rank polls for results with ``Iprobe`` and, when none is waiting, hands the time to
the processing layer's ``wait_for_data`` (which sleeps on its own sockets), so it never spins.

Feedback (OM's mechanism): ``collect_data`` may return ``{rank: map}``; each map goes, as
msgpack, to that processing rank, or to every processing rank still running when the key is the
collecting rank's own number (rank 0 in OM). A processing rank merges the maps it received into
the data of the next event it extracts, for that one event (a key the event's data already has
is counted as ``processing_error`` and dropped).

Failing sources: a processing rank whose last ``om/max_consecutive_failed_events`` events all
failed (a frame shape the geometry does not match fails every one), or that ends with every
event failed, stops and says why in its DONE message; the collecting rank then stops every rank
and the monitor exits with code 1 and that one message (:attr:`MpiParallelization.error`).

Stopping: SIGINT/SIGTERM (``mpiexec`` forwards them to every rank) or a STOP message from the
collecting rank make each processing rank leave its event loop and send a DONE message with
its last counts; the collecting rank waits (at most ``_FINAL_WAIT`` s) for every DONE, sends
STOP to every processing rank that has not had it, and prints the final summary. Every rank
then meets the others in a final barrier (bounded in time) before it exits: a rank that exited
while another still sent to it would make that send fail, and ``mpiexec`` would then kill every
rank with SIGKILL. That barrier is an all-reduce of the ranks' exit codes, so every rank exits
with the same code.
"""

import collections
import logging
import os
import threading
import time
import traceback
from typing import Any, ClassVar

import numpy as np
from mpi4py import MPI

from om.lib.exceptions import (
    OmConfigurationError,
    OmDataExtractionError,
    OmException,
    OmInvalidDataError,
)
from om.lib.parameters import MonitorParameters, ParameterGroup
from om.lib.problems import problems
from om.lib.serialization import (
    OutOfBandBuffers,
    pack,
    pack_out_of_band,
    unpack,
    unpack_out_of_band,
)
from om.lib.stage_times import stage_times
from om.parallelization_layer.mpi_single_copy import large_sends_need_the_sender
from om.parallelization_layer.shared_result_buffers import (
    CANNOT_ATTACH,
    SharedBufferReceiver,
    SharedBufferSender,
)
from om.protocols.data_retrieval_layer import OmDataRetrievalProtocol
from om.protocols.processing_layer import OmProcessingProtocol

logger = logging.getLogger("om")

_TAG_DATA = 1
_TAG_DONE = 2
_TAG_STOP = 3
_TAG_BUFFER = 4  # an out-of-band array of the next DATA or DONE message
_TAG_SHARED_BUFFER = 5  # the same, in a shared-memory slot: the slot's descriptor
_TAG_SLOT_FREE = 6  # collecting -> processing rank: a shared-memory slot copied out (int64)
_TAG_FEEDBACK = 7  # collecting -> processing rank: collect_data's feedback (msgpack map)
_OUT_OF_BAND_BYTES = 65536  # arrays this large travel out of band
# While a message is on its way the collecting rank looks again every _RECEIVE_POLL_STEP s, and
# still hands the processing layer its idle time (wait_for_data) every _RECEIVE_POLL_PERIOD s.
_RECEIVE_POLL_STEP = 0.0002
_RECEIVE_POLL_PERIOD = 0.005
_DRIVE_TIMEOUT = 1.0  # s a processing rank drives a frame's send without single-copy transfers
_FINAL_WAIT = 10.0
# Results a processing rank may have in flight to the collecting rank before it waits: enough to
# cover the collecting rank's idle sleep at a few hundred events/s, bounded so a stalled
# collecting rank costs memory of at most this many results (a few hold a frame).
_MAX_SENDS_IN_FLIGHT = 16
_SEND_WAIT_STEP = 0.0005


def _bcast_msgpack(comm: MPI.Comm, obj: Any, root: int) -> Any:
    """Broadcasts a msgpack-encodable object from ``root`` as bytes."""
    payload = pack(obj) if comm.Get_rank() == root else b""
    length = np.array([len(payload)], dtype=np.int64)
    comm.Bcast(length, root=root)
    buffer = bytearray(payload) if comm.Get_rank() == root else bytearray(int(length[0]))
    comm.Bcast([buffer, MPI.BYTE], root=root)
    return unpack(bytes(buffer))


def _allgather_msgpack(comm: MPI.Comm, obj: Any) -> list[Any]:
    """Gathers one msgpack-encodable object from every rank, on every rank."""
    payload = pack(obj)
    lengths = np.zeros(comm.Get_size(), dtype=np.int64)
    comm.Allgather(np.array([len(payload)], dtype=np.int64), lengths)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    gathered = bytearray(int(lengths.sum()))
    comm.Allgatherv([payload, MPI.BYTE], [gathered, lengths, offsets, MPI.BYTE])
    return [unpack(bytes(gathered[o:o + n])) for o, n in zip(offsets, lengths)]


class MpiParallelization:
    """Runs the data retrieval and processing layers over the ranks of ``MPI.COMM_WORLD``.

    Args:
        data_retrieval_layer: the configured Data Retrieval.
        processing_layer: the configured processing layer.
        parameters: the monitor's configuration.

    Raises:
        OmConfigurationError: when fewer than 2 ranks run.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = ()

    def __init__(self, *, data_retrieval_layer: OmDataRetrievalProtocol,
                 processing_layer: OmProcessingProtocol, parameters: MonitorParameters) -> None:
        self._comm = MPI.COMM_WORLD
        self._rank = self._comm.Get_rank()
        self._size = self._comm.Get_size()
        if self._size < 2:
            raise OmConfigurationError(
                "the monitor needs at least 2 MPI ranks (1 collecting, 1 or more processing): "
                "run it as 'mpiexec -n N om_monitor.py ...' with N >= 2"
            )
        self._handler = data_retrieval_layer.get_data_event_handler()
        self._processing = processing_layer
        self._collector = 0 if self._handler.designated_collector_rank() == "first" else self._size - 1
        self._max_failures = parameters.get("om", "max_consecutive_failed_events")
        self.error: str | None = None
        """Why the run failed (every event failed), or None."""
        self._last_failure = ""  # processing rank: the last failed event's problem
        self._stop_requested = threading.Event()
        self._finished = threading.Event()  # the processing rank sent DONE
        self._stopped_ranks: set[int] = set()  # the processing ranks sent STOP
        # (requests, (payload, buffers)): these must live until their sends complete
        self._sends_in_flight: collections.deque[tuple[list[MPI.Request], Any]] = (
            collections.deque())
        self._out_of_band = OutOfBandBuffers()  # collecting rank: arrays awaiting their result
        # Collecting rank: feedback sends not known to be complete (payloads kept alive).
        self._feedback_in_flight: list[tuple[MPI.Request, bytes]] = []
        self._feedback: dict[str, Any] = {}  # processing rank: received, not yet merged
        # Without single-copy transfers a frame moves only while its sender calls MPI: frames
        # then go through shared memory, or (other host, no free slot) are driven through MPI.
        self._drive_large_sends = large_sends_need_the_sender(MPI.Get_library_version())
        self._shared_sender = SharedBufferSender() if self._drive_large_sends else None
        self._shared_receiver = SharedBufferReceiver()
        if self._drive_large_sends and self._rank == self._collector:
            logger.warning(
                "MPICH cannot copy frames straight between ranks here (CMA is off: Yama's "
                "ptrace_scope is not 0, or MPIR_CVAR_CH4_CMA_ENABLE=0): the processing ranks "
                "hand their frames over through shared memory (docs/performance.md)")

    @property
    def is_collecting_rank(self) -> bool:
        """Whether this rank is the collecting rank."""
        return self._rank == self._collector

    def request_stop(self) -> None:
        """Asks this rank to stop soon; safe in a signal handler."""
        self._stop_requested.set()
        if not self.is_collecting_rank:
            self._handler.stop()

    def initialize(self) -> None:
        """Initializes every layer on every rank; every rank fails if one does.

        Raises:
            OmConfigurationError: the first rank's error message, on every rank.
        """
        error: str | None = None
        info: dict[str, Any] | None = None
        kwargs = {"node_rank": self._rank, "node_pool_size": self._size}
        if self.is_collecting_rank:
            try:
                info = self._handler.initialize_event_handling_on_collecting_node(**kwargs)
                self._processing.initialize_collecting_node(**kwargs)
            except OmException as exception:
                error = str(exception)
            except Exception as exception:  # a bug must still stop every rank cleanly
                error = f"{type(exception).__name__}: {exception}"
                traceback.print_exc()
        collector_state = _bcast_msgpack(self._comm, {"info": info, "error": error},
                                         self._collector)
        if collector_state["error"] is None and not self.is_collecting_rank:
            try:
                self._handler.initialize_event_handling_on_processing_node(
                    collecting_node_info=collector_state["info"], **kwargs)
                self._processing.initialize_processing_node(**kwargs)
            except OmException as exception:
                error = str(exception)
            except Exception as exception:
                error = f"{type(exception).__name__}: {exception}"
                traceback.print_exc()
        errors = [e for e in _allgather_msgpack(self._comm, error) if e is not None]
        if collector_state["error"] is not None:
            errors.insert(0, collector_state["error"])
        if errors:
            if self.is_collecting_rank:
                self._handler.stop()
            raise OmConfigurationError(errors[0])

    def start(self) -> int:
        """Runs this rank's part until the stop, then finalizes it.

        Returns:
            The exit code, the same on every rank that reached the end: 1 when a processing
            rank's events all failed (:attr:`error` says why on the collecting rank), else 0.
        """
        if self.is_collecting_rank:
            self._run_collecting_rank()
        else:
            self._run_processing_rank()
        return self._final_barrier(1 if self.error else 0)

    # Processing ranks ---------------------------------------------------------------------

    def _watch_for_stop_message(self) -> None:
        """Waits for the collecting rank's STOP; once DONE is sent, at most ``_FINAL_WAIT`` s.

        The collecting rank sends STOP to every processing rank at the end, so it is always
        received, never left unmatched.
        """
        flag = bytearray(1)
        request = self._comm.Irecv([flag, MPI.BYTE], source=self._collector, tag=_TAG_STOP)
        deadline: float | None = None
        while not request.Test():
            if self._finished.is_set():
                deadline = deadline or time.monotonic() + _FINAL_WAIT
                if time.monotonic() > deadline:
                    logger.warning("rank %d: no STOP from the collecting rank", self._rank)
                    request.Cancel()
                    request.Wait()  # a cancelled request must still complete
                    return
            # Without single-copy transfers a waiting rank's last results move only while it
            # calls MPI: this thread's Test does that every millisecond.
            time.sleep(0.001 if self._drive_large_sends else
                       0.01 if self._finished.is_set() else 0.1)
        self.request_stop()

    def _send(self, tag: int, result: dict[str, Any] | None, error: str | None = None) -> None:
        """Sends a result (and, with DONE, why the rank's events all failed, or None) without
        waiting for the collecting rank to receive it.

        A blocking ``Send`` would stall the processing rank (MPICH spins in it) until the
        collecting rank wakes from its idle sleep; ``Isend`` returns at once and the rank waits
        (sleeping, not spinning) only when ``_MAX_SENDS_IN_FLIGHT`` results are still unreceived.
        """
        times = stage_times.take_unsent()
        message = {"result": result, "problems": problems.take_unsent(), "stage_times": times}
        if error is not None:
            message["error"] = error
        try:
            payload, buffers = pack_out_of_band(message, _OUT_OF_BAND_BYTES)
        except (TypeError, OmException) as bug:  # a result msgpack cannot carry: a bug
            problems.report("processing_error", f"result not sent: {bug}")
            payload, buffers = pack({"result": None, "problems": problems.take_unsent(),
                                     "stage_times": times, "error": error}), []
        self._complete_sends(keep=_MAX_SENDS_IN_FLIGHT - 1)
        requests, messages, driven = [], [], False
        for buffer in buffers:
            descriptor = self._put_in_shared_memory(buffer)
            if descriptor is not None:
                messages.append(descriptor)
                requests.append(self._comm.Isend([descriptor, MPI.BYTE], dest=self._collector,
                                                 tag=_TAG_SHARED_BUFFER))
            else:
                driven = self._drive_large_sends
                requests.append(self._comm.Isend([buffer, MPI.BYTE], dest=self._collector,
                                                 tag=_TAG_BUFFER))
        requests.append(self._comm.Isend([payload, MPI.BYTE], dest=self._collector, tag=tag))
        # The payload and buffers (views of the arrays) stay alive until the sends complete.
        self._sends_in_flight.append((requests, (payload, buffers, messages)))
        if driven:
            self._drive_until_sent(requests)
        else:
            # Without single-copy transfers a result of more than ~8 kB moves only inside an MPI
            # call of its sender, once the collecting rank has posted its receive: calling MPI
            # now moves what is ready (CMA off: `sending` 0.09 instead of 0.23-0.25 ms).
            MPI.Request.Testall(requests)

    def _put_in_shared_memory(self, buffer: memoryview) -> bytes | None:
        """Copies an out-of-band buffer into a free shared-memory slot (MPI without
        single-copy transfers only); returns the packed descriptor to send, or None."""
        if self._shared_sender is None:
            return None
        self._take_back_slots()
        descriptor = self._shared_sender.put(buffer)
        return None if descriptor is None else pack(descriptor)

    def _take_back_slots(self) -> None:
        """Receives the slots the collecting rank has copied out (non-blocking)."""
        slot = np.empty(1, dtype=np.int64)
        while self._comm.Iprobe(source=self._collector, tag=_TAG_SLOT_FREE):
            self._comm.Recv([slot, MPI.INT64_T], source=self._collector, tag=_TAG_SLOT_FREE)
            self._shared_sender.release(int(slot[0]))

    def _drive_until_sent(self, requests: list[MPI.Request]) -> None:
        """Calls MPI until ``requests`` complete (at most ``_DRIVE_TIMEOUT`` s), yielding the
        core between calls: without single-copy transfers each call moves the next piece."""
        deadline = time.monotonic() + _DRIVE_TIMEOUT
        while not MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                problems.report("slow_result_send", f"rank {self._rank}: a frame was not "
                                f"received within {_DRIVE_TIMEOUT:.0f} s; going on")
                return
            os.sched_yield()

    def _complete_sends(self, keep: int, timeout: float | None = None) -> None:
        """Forgets completed sends; waits until at most ``keep`` are in flight.

        With ``timeout`` (s), gives up after it (the collecting rank may have stopped waiting).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._sends_in_flight:
            if MPI.Request.Testall(self._sends_in_flight[0][0]):
                self._sends_in_flight.popleft()
            elif len(self._sends_in_flight) <= keep:
                return
            elif deadline is not None and time.monotonic() > deadline:
                logger.warning("rank %d: %d results not received by the collecting rank",
                               self._rank, len(self._sends_in_flight))
                return
            else:
                time.sleep(_SEND_WAIT_STEP)

    def _process_event(self, event: Any, kwargs: dict[str, int]
                       ) -> tuple[float | None, dict[str, Any] | None]:
        """Retrieves and processes one event: (the ``perf_counter`` time its data was
        retrieved, the result), or (None, None) when bad input made it fail (counted)."""
        self._handler.open_event(event=event)
        self._receive_feedback()
        try:
            data = self._handler.extract_data(event=event)
            self._merge_feedback(data)
            retrieved = time.perf_counter()
            result, _ = self._processing.process_data(data=data, **kwargs)
            return retrieved, result
        except OmDataExtractionError as error:
            self._last_failure = f"extraction_error: {error}"
            problems.report("extraction_error", str(error))
        except Exception as error:  # bad input must never kill a rank
            self._last_failure = f"processing_error: {type(error).__name__}: {error}"
            problems.report("processing_error", f"{type(error).__name__}: {error}")
            logger.debug("processing error", exc_info=True)
        finally:
            self._handler.close_event(event=event)
        return None, None

    def _receive_feedback(self) -> None:
        """Receives the collecting rank's feedback sent so far (non-blocking), for the next
        event; a message that is not a msgpack map is counted as ``bad_rank_message``."""
        status = MPI.Status()
        while self._comm.Iprobe(source=self._collector, tag=_TAG_FEEDBACK, status=status):
            buffer = bytearray(status.Get_count(MPI.BYTE))
            self._comm.Recv([buffer, MPI.BYTE], source=self._collector, tag=_TAG_FEEDBACK)
            try:
                message = unpack(bytes(buffer))
            except OmException as error:
                problems.report("bad_rank_message", f"feedback: {error}")
                continue
            if not isinstance(message, dict):
                problems.report("bad_rank_message",
                                f"feedback: a {type(message).__name__}, not a map")
                continue
            self._feedback.update(message)

    def _merge_feedback(self, data: dict[str, Any]) -> None:
        """Adds the feedback received since the last event to this event's data."""
        if not self._feedback:
            return
        clashing = sorted(str(key) for key in self._feedback if key in data)
        if clashing:
            problems.report("processing_error", f"feedback keys {', '.join(clashing)} are "
                            "also the event's data: dropped")
        data.update((key, value) for key, value in self._feedback.items() if key not in data)
        self._feedback = {}

    def _run_processing_rank(self) -> None:
        kwargs = {"node_rank": self._rank, "node_pool_size": self._size}
        watcher = threading.Thread(target=self._watch_for_stop_message, daemon=True)
        watcher.start()
        clock = time.perf_counter
        last: float | None = None  # the wait for the first event is start-up, not a stage
        failed_in_a_row, succeeded = 0, 0
        error: str | None = None
        for event in self._handler.event_generator(**kwargs):
            received = clock()
            retrieved, result = self._process_event(event, kwargs)
            processed = clock()
            if retrieved is not None:
                failed_in_a_row, succeeded = 0, succeeded + 1
                self._send(_TAG_DATA, result)
            else:
                failed_in_a_row += 1
                if self._max_failures and failed_in_a_row >= self._max_failures:
                    error = self._failure_message(f"its last {failed_in_a_row} events all failed")
                    self._handler.stop()
                    break
            now = clock()
            retrieval_end = retrieved if retrieved is not None else processed
            stage_times.add_event({"next_event": received - (last or received),
                                   "data_retrieval": retrieval_end - received,
                                   "processing": processed - retrieval_end,
                                   "sending": now - processed})
            last = now
            if self._stop_requested.is_set():
                break
        if error is None and failed_in_a_row and not succeeded:
            error = self._failure_message(f"all its {failed_in_a_row} events failed")
        self._stop_requested.set()
        final = self._processing.end_processing_on_processing_node(**kwargs)
        self._send(_TAG_DONE, final, error)
        self._complete_sends(keep=0, timeout=_FINAL_WAIT)  # received until every DONE
        self._finished.set()
        watcher.join(_FINAL_WAIT + 1.0)
        if self._shared_sender is not None:
            self._take_back_slots()
            self._shared_sender.close()
        self._receive_feedback()  # sent before our DONE arrived: received, not left unmatched
        self.error = error

    def _failure_message(self, what: str) -> str:
        return (f"processing rank {self._rank}: {what}, the last with {self._last_failure}. "
                "A source whose every event fails (e.g. frames of another shape than the "
                "geometry file's, crystallography/geometry_file) stops the monitor after "
                f"om/max_consecutive_failed_events ({self._max_failures}) failed events in a "
                "row (docs/configuration.md)")

    def _final_barrier(self, exit_code: int) -> int:
        """Waits (at most ``_FINAL_WAIT`` s) until every rank is done sending; returns the
        highest exit code of the ranks (this rank's own if they did not all come)."""
        mine = np.array([exit_code], dtype=np.int32)
        highest = np.zeros(1, dtype=np.int32)
        request = self._comm.Iallreduce(mine, highest, op=MPI.MAX)
        deadline = time.monotonic() + _FINAL_WAIT
        while not request.Test():
            if time.monotonic() > deadline:
                logger.warning("rank %d: not every rank reached the end within %.0f s",
                               self._rank, _FINAL_WAIT)
                return exit_code
            time.sleep(0.01)
        if not self.is_collecting_rank:
            self._receive_feedback()
        return int(highest[0])

    # Collecting rank ----------------------------------------------------------------------

    def _run_collecting_rank(self) -> None:
        kwargs = {"node_rank": self._rank, "node_pool_size": self._size}
        processing_ranks = {rank for rank in range(self._size) if rank != self._collector}
        done: set[int] = set()
        status = MPI.Status()
        deadline: float | None = None
        # Messages being received from each rank, in the order they were found (its buffers
        # before its result). Irecv, not Recv: without single-copy transfers a message of more
        # than ~8 kB moves only when its sender next calls MPI; a blocking Recv would spin until
        # then, and one rank's message would hold up the others'.
        receiving: dict[int, collections.deque[tuple[MPI.Request, np.ndarray, int]]] = {
            rank: collections.deque() for rank in processing_ranks}
        idle_since = time.monotonic()  # the last wait_for_data (it serves the responding socket)
        while done != processing_ranks:
            if self._probe(status):
                source, tag = status.Get_source(), status.Get_tag()
                # Not zero-filled: bytearray would write every byte of a 4 MB frame first.
                buffer = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
                request = self._comm.Irecv([buffer, MPI.BYTE], source=source, tag=tag)
                receiving[source].append((request, buffer, tag))
                self._handle_received(receiving, done, kwargs)
                continue
            if self._handle_received(receiving, done, kwargs):
                continue
            if self._stop_requested.is_set():
                if deadline is None:
                    deadline = time.monotonic() + _FINAL_WAIT
                    # Processing ranks that stopped take no more frames: a frame still coming
                    # is dropped because of the stop, not because the ranks were busy.
                    problems.rename_from_now({"frame_dropped_ranks_busy": "frame_dropped_at_stop"})
                    self._handler.stop()  # take no more events while the ranks finish
                    self._send_stop(processing_ranks)
                elif time.monotonic() > deadline:
                    logger.warning("processing ranks %s did not finish within %.0f s",
                                   sorted(processing_ranks - done), _FINAL_WAIT)
                    break
            if any(receiving.values()) and time.monotonic() - idle_since < _RECEIVE_POLL_PERIOD:
                time.sleep(_RECEIVE_POLL_STEP)  # a message is on its way: look again soon
                continue
            self._processing.wait_for_data(**kwargs)
            idle_since = time.monotonic()
        self._send_stop(processing_ranks)  # ranks that ended by themselves wait for it
        self._handler.stop()
        self._processing.end_processing_on_collecting_node(**kwargs)
        self._shared_receiver.close()

    def _handle_received(self, receiving: dict[int, collections.deque], done: set[int],
                         kwargs: dict[str, int]) -> bool:
        """Handles the messages received so far, each rank's in order; returns whether there
        were any."""
        handled = False
        for source, messages in receiving.items():
            while messages and messages[0][0].Test():
                _, buffer, tag = messages.popleft()
                if tag in (_TAG_BUFFER, _TAG_SHARED_BUFFER):
                    self._keep_out_of_band(source, tag, buffer)
                else:
                    self._on_message(source, tag, buffer, done, kwargs)
                handled = True
        return handled

    def _keep_out_of_band(self, source: int, tag: int, buffer: np.ndarray) -> None:
        """Keeps an out-of-band buffer for the next result of ``source``; a buffer in shared
        memory is copied out and its slot sent back (or :data:`CANNOT_ATTACH`)."""
        if tag == _TAG_SHARED_BUFFER:
            try:
                buffer, slot = self._shared_receiver.take(source, unpack(buffer))
            except OmInvalidDataError as error:
                problems.report("bad_rank_message", f"from rank {source}: {error}")
                buffer, slot = None, CANNOT_ATTACH  # the rank sends through MPI from now on
            self._comm.Send([np.array([slot], dtype=np.int64), MPI.INT64_T], dest=source,
                            tag=_TAG_SLOT_FREE)
            if buffer is None:
                return
        if not self._out_of_band.add(source, buffer):
            problems.report("bad_rank_message", f"from rank {source}: too many out-of-band "
                            "arrays without their result, oldest dropped")

    def _send_stop(self, processing_ranks: set[int]) -> None:
        """Sends STOP (one byte, sent eagerly) once to every processing rank."""
        for rank in sorted(processing_ranks - self._stopped_ranks):
            self._comm.Send([b"\x01", MPI.BYTE], dest=rank, tag=_TAG_STOP)
            self._stopped_ranks.add(rank)

    def _probe(self, status: MPI.Status) -> bool:
        """Whether a message from a processing rank waits; fills ``status``.

        MPICH's ``Iprobe`` that finds nothing runs the progress engine and returns False even
        when that progress brought a message in; a second ``Iprobe`` sees it. With one probe
        per idle sleep the collecting rank took one message per sleep (measured: 20 kB
        messages completed after 0.5-1.5 s at 200 messages/s; 4 ms with the second probe).
        """
        return bool(self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
                    or self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status))

    def _on_message(self, source: int, tag: int, buffer: np.ndarray, done: set[int],
                    kwargs: dict[str, int]) -> None:
        try:
            # msgpack reads the payload in place; the arrays are views of the buffers.
            message = unpack_out_of_band(buffer, self._out_of_band.take(source))
            problems.merge(message.get("problems") or {})
            if "stage_times" in message:
                stage_times.merge(message["stage_times"])
            result = message.get("result")
        except (OmException, AttributeError, ValueError) as error:
            problems.report("bad_rank_message", f"from rank {source}: {error}")
            return
        if tag == _TAG_DONE:
            done.add(source)
            if message.get("error") and self.error is None:
                self.error = str(message["error"])
                self._stop_requested.set()  # the other ranks' events would fail the same way
        if result is not None:
            feedback = self._processing.collect_data(processed_data=(result, source), **kwargs)
            if feedback:
                self._send_feedback(feedback, done)

    def _send_feedback(self, feedback: dict[int, dict[str, Any]], done: set[int]) -> None:
        """Sends each map of ``collect_data``'s feedback to its rank (the collecting rank's
        number: every processing rank) unless that rank is done; a map msgpack cannot carry
        or a key that is no processing rank is counted as ``processing_error``."""
        self._feedback_in_flight = [(request, payload) for request, payload
                                    in self._feedback_in_flight if not request.Test()]
        running = set(range(self._size)) - {self._collector} - done
        for key, message in feedback.items():
            if key == self._collector:
                ranks = running
            elif isinstance(key, int) and 0 <= key < self._size:
                ranks = running & {key}
            else:
                problems.report("processing_error", f"feedback for rank {key!r}: no such rank")
                continue
            try:
                payload = pack(message)
            except (TypeError, OmException) as error:
                problems.report("processing_error", f"feedback not sent: {error}")
                continue
            for rank in sorted(ranks):
                request = self._comm.Isend([payload, MPI.BYTE], dest=rank, tag=_TAG_FEEDBACK)
                self._feedback_in_flight.append((request, payload))
