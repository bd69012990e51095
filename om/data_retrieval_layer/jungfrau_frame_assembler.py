# SPDX-License-Identifier: GPL-3.0-or-later
"""Assembly of JUNGFRAU frames from the per-module ZeroMQ streams of slsReceiver.

Wire format (slsDetectorPackage, ``zmqjsonheaderformat``; see the project's reference notes):
every stream is a PUB socket that sends two-part messages, a JSON header and the raw
little-endian uint16 image of one module (or half module), and a single-part JSON message with
``"data": 0`` at the end of an acquisition. Streams lose and reorder frames independently, so
the assembler matches the module messages of one frame by ``frameNumber``, waits a bounded time
for the missing ones, and never mixes modules of different frames.

The assembler runs once, as a thread on the collecting rank, and deals every complete frame to
exactly one processing rank with room for it, through a
:class:`~om.data_retrieval_layer.frame_distribution.FrameDealer` (shared memory on one host).
The metadata of a frame is ``{"frame_number", "timestamp", "headers"}`` and its images are the
module images in module order.

Hostile or broken input: a header is at most 64 kB of JSON, nested at most 16 levels
(:func:`om.lib.input_limits.parse_json_object`); an integer beyond 64 bits is ignored (made
None, counted as ``bad_header_field``); ``frameNumber`` must be an integer within 0 to
2**64 - 1, and a ``timestamp`` that is not is ignored (``bad_header_field``); a message part
larger than four module images ends the sender's connection in libzmq (``ZMQ_MAXMSGSIZE``)
before it is allocated, and the connection is made again
(:class:`om.lib.zmq_sockets.SizeLimitedConnection`). Whatever else handling a message raises
is counted (``assembler_error``); a thread that ends anyway is reported
(``assembler_thread_ended``), sets :attr:`JungfrauFrameAssembler.failed` and calls the
``on_failure`` callback, which stops the monitor rather than let it run on without frames.
"""

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

import zmq

from om.data_retrieval_layer.frame_distribution import FrameDealer
from om.lib.exceptions import OmConfigurationError, OmInvalidDataError
from om.lib.input_limits import (
    MAX_JSON_HEADER_BYTES,
    MAX_UINT64,
    is_int_in,
    parse_json_object,
)
from om.lib.problems import problems
from om.lib.waiting_report import WAITING_REPORT_INTERVAL, WaitingReport
from om.lib.zmq_sockets import SizeLimitedConnection

logger = logging.getLogger("om")

MODULE_FS = 1024
BYTES_PER_PIXEL = 2
DETECTOR_CLOCK_HZ = 1.0e7  # the JUNGFRAU timestamp counts 100 ns ticks
_REANCHOR_TOLERANCE_S = 10.0
_EXPIRED_REMEMBERED = 4096  # frame numbers already counted as incomplete
# Module images a stream's SUB socket queues before ZeroMQ drops new ones: bounds the memory
# (~1 MB each) and the age of the frames when the collecting rank falls behind.
_STREAM_QUEUE_IMAGES = 64
# A frame number this far below the stream's highest is a new acquisition, not a late image.
_RESTART_GAP = 1000
_MAX_FAILURES_IN_A_ROW = 100
# A message part larger than this many module images ends the sender's connection in libzmq:
# twice the 16-bit image (32-bit mode) still arrives and is counted as wrong_size.
_MAX_PART_IMAGES = 4
BAD_HEADER_FIELD = "bad_header_field"
"""Problem kind: a header value ignored (an integer beyond 64 bits, a bad timestamp)."""
ASSEMBLER_ERROR = "assembler_error"
"""Problem kind: handling a message raised an unexpected error; the message is dropped."""
ASSEMBLER_THREAD_ENDED = "assembler_thread_ended"
"""Problem kind: the assembly thread ended without being asked to (no more frames)."""


@dataclasses.dataclass
class _PendingFrame:
    first_seen: float
    headers: list[Any]
    images: list[Any]


class DetectorClock:
    """Turns detector clock ticks into seconds since the epoch.

    The clock is anchored to the wall time when the first frame arrives and re-anchored when
    it drifts from the wall clock by more than 10 s (a detector restart resets its clock).
    """

    def __init__(self) -> None:
        self._anchor_wall: float | None = None
        self._anchor_ticks = 0

    def to_epoch(self, ticks: int) -> float:
        """Returns the epoch time (s, float) of a detector timestamp in 100 ns ticks."""
        now = time.time()
        if self._anchor_wall is not None:
            seconds = self._anchor_wall + (ticks - self._anchor_ticks) / DETECTOR_CLOCK_HZ
            if abs(seconds - now) < _REANCHOR_TOLERANCE_S:
                return seconds
            logger.info("detector clock re-anchored to the wall clock (jump of %.1f s)",
                        seconds - now)
        self._anchor_wall, self._anchor_ticks = now, ticks
        return now


class JungfrauFrameAssembler:
    """Subscribes to the module streams, assembles frames and deals them to processing ranks.

    Args:
        stream_urls: the ZeroMQ URLs of the module streams in module order (module 0 first);
            two streams for a JUNGFRAU 1M with one interface per module, four with two.
        distribution_host: the interface the frame dealer binds to (a random free port).
        rows_per_stream: the rows (slow-scan) of each stream's image (512 for a module).
        assembly_timeout: how long (s) to wait for the missing modules of a frame.
        expected_receivers: the assembler subscribes to the detector streams only once this
            many :class:`~om.data_retrieval_layer.frame_distribution.FrameReceiver` have said
            hello, so no frame is dropped at start-up.
        waiting_report_interval: seconds without a frame between two lines saying what the
            streams sent meanwhile (:mod:`om.lib.waiting_report`).
        secret: the dealing secret the receivers must show
            (:func:`~om.data_retrieval_layer.frame_distribution.new_secret`).
        on_failure: called (from the assembly thread, with the reason) when the thread ends
            without being asked to and no frame will come; it must only set flags or send a
            signal.

    Raises:
        OmConfigurationError: when a URL is malformed or the dealer's socket cannot bind.
    """

    def __init__(self, *, stream_urls: list[str], distribution_host: str, rows_per_stream: int,
                 assembly_timeout: float, secret: bytes, expected_receivers: int = 0,
                 waiting_report_interval: float = WAITING_REPORT_INTERVAL,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self._urls = stream_urls
        self._image_bytes = rows_per_stream * MODULE_FS * BYTES_PER_PIXEL
        self._rows = rows_per_stream
        self._timeout = assembly_timeout
        self._max_pending = 64
        self._context = zmq.Context.instance()
        self._subscribers: list[zmq.Socket] = []
        self._connections: list[SizeLimitedConnection] = []
        io_threads = max(1, self._context.get(zmq.IO_THREADS))
        for index, url in enumerate(stream_urls):
            socket = self._context.socket(zmq.SUB)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, _STREAM_QUEUE_IMAGES)
            # The streams' TCP receive spread over the context's I/O threads (one in a thread
            # of the collecting rank; one per stream in the frame assembler process).
            socket.setsockopt(zmq.AFFINITY, 1 << (index % io_threads))
            try:
                self._connections.append(SizeLimitedConnection(
                    socket, url, what="the detector stream",
                    max_bytes=_MAX_PART_IMAGES * max(self._image_bytes, MAX_JSON_HEADER_BYTES)))
            except zmq.ZMQError as error:
                socket.close()
                self.close()
                raise OmConfigurationError(f"cannot connect to the detector stream {url!r}: {error}")
            self._subscribers.append(socket)
        self._expected_receivers = expected_receivers
        try:
            self._dealer: FrameDealer | None = FrameDealer(distribution_host, secret=secret)
        except OmConfigurationError:
            self.close()
            raise
        self.endpoint = self._dealer.endpoint
        self._pending: dict[int, _PendingFrame] = {}
        self._highest: list[int | None] = [None] * len(stream_urls)  # per stream
        # A module image that comes after its frame was dropped as incomplete belongs to a frame
        # already counted: it is counted as late, not as a second incomplete frame.
        self._expired: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._clock = DetectorClock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_forwarded = 0
        self.acquisitions_ended = 0
        self._on_failure = on_failure
        self.failed = False
        """True once the assembly thread has ended without being asked to."""
        # What came since the last frame, for the waiting report: module images per stream
        # and unusable messages by kind.
        self._images_since_frame = [0] * len(stream_urls)
        self._bad_since_frame: dict[str, int] = {}
        self._waiting = WaitingReport(", ".join(stream_urls), self._describe_wait,
                                      waiting_report_interval)

    def start(self) -> None:
        """Starts the assembly thread."""
        self._thread = threading.Thread(target=self._run_reporting_the_end,
                                        name="om-frame-assembler", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the assembly thread runs (False before :meth:`start` and after it ended,
        asked to or not)."""
        return self._thread is not None and self._thread.is_alive()

    def _run_reporting_the_end(self) -> None:
        try:
            self._run()
        except BaseException as error:  # noqa: BLE001 - reported: no frame comes after it
            reason = f"{type(error).__name__}: {str(error)[:200]}"
            problems.report(ASSEMBLER_THREAD_ENDED, f"the frame assembler thread ended by "
                            f"{reason}; no more frames")
            self.failed = True
            if self._on_failure is not None:
                self._on_failure(reason)

    def stop(self, timeout: float = 2.0) -> None:
        """Stops the assembly thread and closes the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        """Closes every socket (idempotent)."""
        for connection in self._connections:
            connection.close()
        self._connections = []
        for socket in self._subscribers:
            socket.close(0)
        self._subscribers = []
        if getattr(self, "_dealer", None) is not None:
            self._dealer.close()
            self._dealer = None

    def _wait_for_receivers(self) -> bool:
        while self._dealer.receivers < self._expected_receivers:
            if self._stop.is_set():
                return False
            if self._dealer.socket.poll(100):
                self._dealer.handle_messages()
        logger.info("%d processing ranks connected (%d through shared memory): subscribing to %s",
                    self._dealer.receivers, self._dealer.shared_memory_receivers,
                    ", ".join(self._urls))
        return True

    def _run(self) -> None:
        if not self._wait_for_receivers():
            return
        self._waiting.data_arrived()  # the wait for data starts now, not at construction
        for socket in self._subscribers:
            socket.setsockopt(zmq.SUBSCRIBE, b"")
        poller = zmq.Poller()
        for socket in self._subscribers:
            poller.register(socket, zmq.POLLIN)
        poller.register(self._dealer.socket, zmq.POLLIN)
        index_of = {socket: index for index, socket in enumerate(self._subscribers)}
        failures = 0  # in a row: a fault that every turn meets ends the thread (reported)
        while not self._stop.is_set():
            try:
                self._poll_once(poller, index_of)
                failures = 0
            except Exception as error:  # noqa: BLE001 - counted; assembly goes on
                if self._stop.is_set():  # e.g. stop() closed the sockets after its wait
                    return
                failures += 1
                if failures > _MAX_FAILURES_IN_A_ROW:
                    raise
                problems.report(ASSEMBLER_ERROR, f"frame assembler: {type(error).__name__}: "
                                f"{str(error)[:200]}")

    def _poll_once(self, poller: zmq.Poller, index_of: dict[zmq.Socket, int]) -> None:
        """Waits up to 50 ms for messages and handles what came."""
        ready = dict(poller.poll(50))
        if self._dealer.socket in ready:  # slots given back first: room for these frames
            self._dealer.handle_messages()
        for socket, index in index_of.items():
            if socket not in ready:
                continue
            # Drain what is there, so one busy stream cannot starve the others.
            for _ in range(16):
                try:
                    parts = socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    self._on_message(index, parts)
                except Exception as error:  # noqa: BLE001 - whatever a decoder raised
                    self._unusable(ASSEMBLER_ERROR, f"stream {self._urls[index]}: "
                                   f"{type(error).__name__}: {str(error)[:200]} "
                                   "(message dropped)")
        self._expire(time.monotonic())
        self._dealer.forget_gone_receivers()  # a dead rank's frames counted even when idle
        self._waiting.poll()
        for connection in self._connections:
            connection.check()

    def _describe_wait(self) -> str:
        """What the streams sent since the last frame, for :class:`WaitingReport`."""
        bad = ", ".join(f"{kind} {count}" for kind, count in sorted(self._bad_since_frame.items()))
        images = self._images_since_frame
        if not any(images):
            if bad:
                return f"received only messages it cannot use ({bad})"
            return ("received nothing on any stream (a wrong host or port and a detector that "
                    "is not streaming look the same: check the URLs against slsReceiver's)")
        counts = ", ".join(f"{url} {count}" for url, count in zip(self._urls, images))
        silent = [url for url, count in zip(self._urls, images) if count == 0]
        if silent:
            text = (f"received module images from some streams only ({counts}): nothing from "
                    f"{', '.join(silent)}, so every frame is incomplete")
        else:
            text = (f"received module images from every stream ({counts}) but no complete "
                    "frame: their frame numbers do not match within frame_assembly_timeout")
        return f"{text}; unusable messages: {bad}" if bad else text

    def _unusable(self, kind: str, message: str) -> None:
        self._bad_since_frame[kind] = self._bad_since_frame.get(kind, 0) + 1
        problems.report(kind, message)

    def _on_message(self, index: int, parts: list[zmq.Frame]) -> None:
        url = self._urls[index]
        ignored: list[str] = []
        try:
            header = parse_json_object(parts[0].buffer, f"stream {url}: header", ignored=ignored)
        except OmInvalidDataError as error:
            self._unusable("bad_header", str(error))
            return
        for line in ignored:  # the value is None now: the frame goes on without it
            problems.report(BAD_HEADER_FIELD, f"stream {url}: header: {line} (ignored)")
        if len(parts) == 1:
            if header.get("data") == 0:
                self.acquisitions_ended += 1
                self._highest[index] = None  # the next acquisition counts from 1 again
                logger.info("stream %s: end of acquisition", url)
            else:
                self._unusable("bad_message", f"stream {url}: single-part message with data")
            return
        if len(parts) != 2:
            self._unusable("bad_message", f"stream {url}: {len(parts)} message parts, expected 2")
            return
        frame_number = header.get("frameNumber")
        if not is_int_in(frame_number, 0, MAX_UINT64):
            self._unusable("bad_header", f"stream {url}: no frameNumber within 0 to 2**64 - 1 "
                                         "in the header")
            return
        ticks = header.get("timestamp", 0)
        if ticks is None:  # absent, null, or made null above (already counted)
            header["timestamp"] = 0
        elif not is_int_in(ticks, 0, MAX_UINT64):
            problems.report(BAD_HEADER_FIELD, f"stream {url}: frame {frame_number}: timestamp "
                                              f"{str(ticks)[:40]} is not an integer within 0 to "
                                              "2**64 - 1 (ignored)")
            header["timestamp"] = 0
        self._count_missed(index, frame_number)
        size = len(parts[1].buffer)
        if size != self._image_bytes or header.get("bitmode", 16) != 16:
            self._unusable(
                "wrong_size",
                f"stream {url}: frame {frame_number} has {size} bytes at "
                f"{header.get('bitmode')} bits, expected {self._image_bytes} "
                f"({self._rows}x{MODULE_FS} uint16)",
            )
            return
        self._images_since_frame[index] += 1
        if header.get("completeImage", 1) == 0:
            problems.report("missing_packets",
                            f"stream {url}: frame {frame_number} lost packets (pixels ignored)")
        pending = self._pending.get(frame_number)
        if pending is None and frame_number in self._expired:
            problems.report("late_module_image",
                            f"stream {url}: frame {frame_number} came after its frame was "
                            "dropped as incomplete")
            return
        if pending is None:
            if len(self._pending) >= self._max_pending:
                self._drop_oldest()
            pending = _PendingFrame(time.monotonic(), [None] * len(self._urls),
                                    [None] * len(self._urls))
            self._pending[frame_number] = pending
        if pending.images[index] is not None:
            problems.report("duplicate_frame", f"stream {url}: frame {frame_number} sent twice")
            return
        pending.headers[index] = header
        pending.images[index] = parts[1]
        if all(image is not None for image in pending.images):
            del self._pending[frame_number]
            self._forward(frame_number, pending)

    def _count_missed(self, index: int, frame_number: int) -> None:
        """Counts the frame numbers a stream skipped: images lost before they reached the
        assembler (e.g. dropped by ZeroMQ when the stream's queue was full), which nothing
        else would ever see."""
        highest = self._highest[index]
        if highest is not None and frame_number > highest + 1:
            missed = frame_number - highest - 1
            problems.report("missed_module_images",
                            f"stream {self._urls[index]}: {missed} frame numbers skipped "
                            f"({highest + 1}-{frame_number - 1})", count=missed)
        if highest is None or frame_number > highest or frame_number < highest - _RESTART_GAP:
            self._highest[index] = frame_number

    def _forward(self, frame_number: int, pending: _PendingFrame) -> None:
        ticks = pending.headers[0].get("timestamp", 0)  # checked in _on_message
        metadata = {
            "frame_number": frame_number,
            "timestamp": self._clock.to_epoch(ticks),
            "headers": pending.headers,
        }
        # A frame dropped because every rank is busy came all the same: no waiting report.
        self._waiting.data_arrived()
        self._images_since_frame = [0] * len(self._urls)
        self._bad_since_frame = {}
        if self._dealer.deal(metadata, pending.images):
            self.frames_forwarded += 1
        else:
            problems.report("frame_dropped_ranks_busy",
                            f"frame {frame_number} dropped: every processing rank is busy")

    def _incomplete(self, frame_number: int, pending: _PendingFrame) -> None:
        self._expired[frame_number] = None
        while len(self._expired) > _EXPIRED_REMEMBERED:
            self._expired.popitem(last=False)
        missing = [url for url, image in zip(self._urls, pending.images) if image is None]
        problems.report("incomplete_frame",
                        f"frame {frame_number} dropped: nothing from {', '.join(missing)}")

    def _drop_oldest(self) -> None:
        frame_number = min(self._pending, key=lambda number: self._pending[number].first_seen)
        self._incomplete(frame_number, self._pending.pop(frame_number))

    def _expire(self, now: float) -> None:
        expired = [number for number, pending in self._pending.items()
                   if now - pending.first_seen > self._timeout]
        for frame_number in expired:
            self._incomplete(frame_number, self._pending.pop(frame_number))
