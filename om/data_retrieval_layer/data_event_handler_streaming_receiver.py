# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Event Handler of MAX IV's streaming-receiver secondary ZeroMQ port.

The streaming-receiver (gitlab.maxiv.lu.se/scisw/detectors/streaming-receiver, its README's
"Secondary zmq data port for live processing") **binds a PUSH socket** and forwards what it
receives from the detector as multipart messages whose first part is a JSON object with an
``htype``:

* ``header`` (once per series): ``msg_number`` (0: a header restarts the count), ``filename``;
  optionally a second part, a JSON object of detector metadata (DECTRIS SIMPLON names:
  ``photon_energy`` eV, ``detector_distance`` m, ``count_time`` s, ``nimages``, nested maps);
* ``image``: ``msg_number``, ``frame``, ``shape`` (``[rows, columns]`` or, for multi-threshold
  detectors, ``[thresholds, rows, columns]``), ``type`` (a numpy dtype name such as
  ``uint32``), ``compression`` (``none``: the raw little-endian array; ``bslz4``: bitshuffle +
  LZ4 in the HDF5-filter framing of :mod:`om.lib.bslz4`), then one binary part per
  (rows, columns) image: 1 + thresholds parts in all; other keys may appear and are kept;
* ``series_end``: ``msg_number``.

Each processing rank connects its own **PULL** socket to the PUSH URL; ZeroMQ deals the
messages round-robin, so each message, **the header too**, reaches one processing rank only.
The collecting rank does nothing for events.

Header values: each processing rank keeps the **last header it received** (filename, beam
energy, detector distance) until the series ends for it: a ``series_end`` message, another
header, or a ``msg_number`` not larger than the previous one it received (a new series whose
header went to another rank: the count restarts). Images of a series whose header this rank did
not receive are processed all the same with the configured fallbacks, and counted once per
series and rank as ``image_without_header``.

``msg_number`` gaps: with N processing ranks each rank receives about every N-th message, so a
rank's own gaps are normal. Between two of its messages numbered ``p`` and ``m``, with ``u``
messages whose number it could not read in between, a rank counts ``m - p - N (u + 1)``
missing messages when positive (the other ranks took N - 1 per step), and only **the first
processing rank** (rank 1) reports them as ``msg_number_gap``: with ZeroMQ's strict turn every
rank's gaps hold every message lost inside a series, so one rank's count is the number lost.
At series boundaries the count is a lower bound (a rank that did not receive a series' end
counts that message only); the first message a rank receives after start-up only sets its
reference.

An event (for the Data Sources of
:mod:`om.data_retrieval_layer.data_sources_streaming_receiver`) is a dict:

* ``image``: the (rows, columns) image (the first threshold of a multi-threshold image), of the
  declared element type, little-endian (read-only when sent uncompressed);
* ``frame`` (int), ``msg_number`` (int), ``event_id`` (str ``"<filename>:<frame>"``, or
  ``"unknown:<frame>"`` when this rank has no header for the series);
* ``timestamp``: float, s since the epoch: the image message's ``timestamp`` when it is a
  plausible epoch time in seconds, else the time this rank received the message;
* ``beam_energy`` (eV) and ``detector_distance`` (mm) from this rank's header of the series, or
  None (the Data Sources then use the fallbacks);
* ``filename`` (str or None), ``metadata`` (the header's metadata dict or None), ``message``
  (the image message's JSON object, for users' own Data Sources).

Bad input never stops a rank: every unusable message is counted (kinds in
:data:`PROBLEM_KINDS`), logged as one line and dropped.
"""

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import zmq

from om.data_retrieval_layer.pull_stream_handler import (
    STREAM_MAX_MESSAGE_MB,
    STREAM_QUEUE_SIZE,
    PullStreamDataEventHandler,
)
from om.lib.bslz4 import HEADER as BSLZ4_HEADER
from om.lib.bslz4 import decompress_bslz4
from om.lib.exceptions import (
    OmInvalidDataError,
)
from om.lib.input_limits import MAX_UINT64, is_int_in, number_or_none
from om.lib.input_limits import parse_json_object as checked_json_object
from om.lib.parameters import Parameter, ParameterGroup
from om.lib.problems import problems

logger = logging.getLogger("om")

_GROUP = "data_retrieval_layer"

MAX_IMAGE_PIXELS = 1 << 26
"""Largest image accepted (pixels of all thresholds): 4x a 16M detector. Larger declared
shapes are refused before anything is allocated."""
MAX_JSON_BYTES = 1 << 20
"""Largest JSON part accepted (the first part, and the header's metadata part), bytes."""

BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
UNKNOWN_HTYPE = "unknown_htype"
BAD_IMAGE_HEADER = "bad_image_header"
UNKNOWN_DTYPE = "unknown_dtype"
UNKNOWN_COMPRESSION = "unknown_compression"
WRONG_SIZE = "wrong_size"
BAD_COMPRESSED_DATA = "bad_compressed_data"
BAD_HEADER_METADATA = "bad_header_metadata"
IMAGE_WITHOUT_HEADER = "image_without_header"
MSG_NUMBER_GAP = "msg_number_gap"
BAD_MESSAGE_FIELD = "bad_message_field"
PROBLEM_KINDS = (BAD_JSON, BAD_MESSAGE, UNKNOWN_HTYPE, BAD_IMAGE_HEADER, UNKNOWN_DTYPE,
                 UNKNOWN_COMPRESSION, WRONG_SIZE, BAD_COMPRESSED_DATA, BAD_HEADER_METADATA,
                 IMAGE_WITHOUT_HEADER, MSG_NUMBER_GAP, BAD_MESSAGE_FIELD)
"""Every problem kind this source reports (documented in docs/source_streaming_receiver.md)."""

_DTYPE_NAMES = {
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "float16": "f2", "float32": "f4", "float64": "f8",
}
_DTYPE_CODES = set(_DTYPE_NAMES.values())
_BEAM_ENERGY_EV = (100.0, 1e6)  # a header's beam energy outside: a wrong unit (keV...)
_DETECTOR_DISTANCE_MM = (1.0, 1e5)  # idem for the distance (mm given for m, m for mm)
_EPOCH_RANGE = (1e9, 1e10)  # 2001-09-09 to 2286-11-20: a timestamp in s since the epoch


class StreamingReceiverError(Exception):
    """A message that cannot be used.

    Attributes:
        kind: the problem kind it is counted as (one of :data:`PROBLEM_KINDS`).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_part(value: Any) -> bool:
    """A msg_number or frame: an integer within 0 to 2**64 - 1 (the receiver's uint64)."""
    return is_int_in(value, 0, MAX_UINT64)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json_object(part: bytes | memoryview, what: str,
                      ignored: list[str] | None = None) -> dict[str, Any]:
    """Decodes a JSON object (UTF-8) of at most :data:`MAX_JSON_BYTES`, nested at most 16
    levels (:func:`om.lib.input_limits.parse_json_object`).

    Args:
        part: the message part.
        what: what it is, for the error message.
        ignored: when given, integers beyond 64 bits are made None and named here; else they
            refuse the part.

    Raises:
        StreamingReceiverError: ``bad_json`` when the part is too long, not JSON, too deep or
            not an object.
    """
    try:
        return checked_json_object(part, what, MAX_JSON_BYTES, ignored)
    except OmInvalidDataError as error:
        raise StreamingReceiverError(BAD_JSON, str(error)) from None


def parse_dtype(name: Any) -> np.dtype:
    """The element type of an image: a numpy name (``uint32``) or code (``u4``, ``<f4``).

    Unsigned and signed integers of 1 to 8 bytes and floats of 2, 4 or 8 bytes; little-endian
    unless the name starts with ``>`` (``<``, ``=`` and ``|`` are accepted too).

    Raises:
        StreamingReceiverError: ``bad_image_header`` when ``name`` is not a string,
            ``unknown_dtype`` when it names no such type.
    """
    if not isinstance(name, str):
        raise StreamingReceiverError(BAD_IMAGE_HEADER, f"'type' {_short(name)} is not a string")
    order, base = ("<", name)
    if name and name[0] in "<>=|":
        order, base = (">" if name[0] == ">" else "<"), name[1:]
    code = _DTYPE_NAMES.get(base, base if base in _DTYPE_CODES else None)
    if code is None:
        raise StreamingReceiverError(UNKNOWN_DTYPE, f"element type {_short(name)} is not one of "
                                                    f"{', '.join(_DTYPE_NAMES)}")
    return np.dtype(order + code)


def _parse_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) not in (2, 3) or not all(
            _is_int(size) for size in shape):
        raise StreamingReceiverError(
            BAD_IMAGE_HEADER, f"'shape' {_short(shape)} is not [rows, columns] or "
                              f"[thresholds, rows, columns] integers")
    if min(shape) <= 0:
        raise StreamingReceiverError(WRONG_SIZE, f"image shape {shape} has an empty dimension")
    if math.prod(shape) > MAX_IMAGE_PIXELS:
        raise StreamingReceiverError(WRONG_SIZE, f"image shape {shape} has more than the "
                                                 f"{MAX_IMAGE_PIXELS} pixels accepted")
    return tuple(shape)


def decode_image(header: dict[str, Any], blobs: Sequence[bytes | memoryview]) -> np.ndarray:
    """Decodes the first (rows, columns) image of an image message, after checking every size.

    Args:
        header: the message's JSON object (``shape``, ``type``, ``compression`` are read).
        blobs: the message's binary parts (one per threshold).

    Returns:
        The (rows, columns) image of the declared element type (the first threshold's for a
        (thresholds, rows, columns) shape); a read-only view of ``blobs[0]`` when uncompressed.

    Raises:
        StreamingReceiverError: ``bad_image_header`` (a key missing or of the wrong type),
            ``unknown_dtype``, ``unknown_compression``, ``bad_message`` (not one binary part
            per threshold), ``wrong_size`` (a part of the wrong byte count, a bslz4 header
            declaring another byte count, an empty or too large shape) or
            ``bad_compressed_data`` (a bslz4 blob that is truncated, malformed or corrupt).
    """
    for key in ("shape", "type", "compression"):
        if key not in header:
            raise StreamingReceiverError(BAD_IMAGE_HEADER, f"image message without '{key}'")
    shape = _parse_shape(header["shape"])
    dtype = parse_dtype(header["type"])
    compression = header["compression"]
    if not isinstance(compression, str):
        raise StreamingReceiverError(BAD_IMAGE_HEADER,
                                     f"'compression' {_short(compression)} is not a string")
    if compression not in ("none", "bslz4"):
        raise StreamingReceiverError(UNKNOWN_COMPRESSION, f"compression {_short(compression)} "
                                                          f"(only 'none' and 'bslz4' are decoded)")
    thresholds = shape[0] if len(shape) == 3 else 1
    if len(blobs) != thresholds:
        raise StreamingReceiverError(
            BAD_MESSAGE, f"image message of shape {list(shape)} has {1 + len(blobs)} parts, "
                         f"expected {1 + thresholds} (one JSON, one per threshold)")
    image_shape = shape[-2:]
    expected = image_shape[0] * image_shape[1] * dtype.itemsize
    blob = blobs[0]
    if compression == "none":
        if len(blob) != expected:
            raise StreamingReceiverError(
                WRONG_SIZE, f"uncompressed image of {len(blob)} bytes, {list(image_shape)} "
                            f"{dtype.name} needs {expected}")
        return np.frombuffer(blob, dtype=dtype).reshape(image_shape)
    if len(blob) < BSLZ4_HEADER.size:
        raise StreamingReceiverError(BAD_COMPRESSED_DATA,
                                     f"bslz4 blob of {len(blob)} bytes has no 12-byte header")
    declared, _ = BSLZ4_HEADER.unpack_from(blob, 0)
    if declared != expected:
        raise StreamingReceiverError(
            WRONG_SIZE, f"bslz4 header declares {declared} bytes, {list(image_shape)} "
                        f"{dtype.name} needs {expected}")
    try:
        return decompress_bslz4(blob, dtype, image_shape)
    except OmInvalidDataError as error:
        raise StreamingReceiverError(BAD_COMPRESSED_DATA, str(error))


def _metadata_value(metadata: dict[str, Any] | None, path: str) -> Any:
    """The value at ``path`` ("a/b/c" for nested maps) of the metadata, or None."""
    value: Any = metadata
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


class SeriesHeader:
    """What a processing rank keeps of the header message it received.

    Attributes:
        filename: the header's ``filename`` (None when absent or not a string).
        metadata: the metadata part (a dict) or None.
        beam_energy: eV, or None when the metadata has no valid value.
        detector_distance: mm, or None when the metadata has no valid value.
    """

    def __init__(self, filename: str | None, metadata: dict[str, Any] | None,
                 beam_energy: float | None, detector_distance: float | None) -> None:
        self.filename = filename
        self.metadata = metadata
        self.beam_energy = beam_energy
        self.detector_distance = detector_distance


class StreamingReceiverMessages:
    """Turns the messages one processing rank receives into events (no sockets: testable).

    Args:
        processing_ranks: N, the number of processing ranks sharing the stream.
        report_gaps: whether this rank reports ``msg_number_gap`` (the first processing rank).
        beam_energy_key: the metadata path of the beam energy, eV.
        detector_distance_key: the metadata path of the detector distance.
        detector_distance_unit: ``"m"`` or ``"mm"``, the unit of that value.
    """

    def __init__(self, *, processing_ranks: int = 1, report_gaps: bool = True,
                 beam_energy_key: str = "photon_energy",
                 detector_distance_key: str = "detector_distance",
                 detector_distance_unit: str = "m") -> None:
        self._share = max(1, processing_ranks) - 1
        self._report_gaps = report_gaps
        self._energy_key = beam_energy_key
        self._distance_key = detector_distance_key
        self._distance_scale = 1000.0 if detector_distance_unit == "m" else 1.0
        self._header: SeriesHeader | None = None
        self._previous: int | None = None  # msg_number of this rank's last message (or -1)
        self._without_header_counted = False
        self._unnumbered = 0  # messages without a readable msg_number since the last one
        self._numbered = False  # whether the message being handled had one
        self.counts = {"messages": 0, "images": 0, "headers": 0, "series_ends": 0,
                       "dropped": 0, "missing_msg_numbers": 0}
        """Messages received, images made into events, headers, series ends, messages
        dropped, and msg_numbers missing beyond the other ranks' share (this rank's view)."""

    @property
    def header(self) -> SeriesHeader | None:
        """The header this rank keeps for the current series, or None."""
        return self._header

    def handle(self, parts: Sequence[bytes | memoryview], received_time: float
               ) -> dict[str, Any] | None:
        """Handles one multipart message.

        Args:
            parts: the message's parts (bytes or buffers).
            received_time: when it was received, s since the epoch.

        Returns:
            The event of an image message (see the module's documentation); None for other
            messages and dropped ones (counted).
        """
        self.counts["messages"] += 1
        self._numbered = False
        try:
            if not parts:
                raise StreamingReceiverError(BAD_MESSAGE, "a message without parts")
            ignored: list[str] = []
            header = parse_json_object(parts[0], "the first part", ignored)
            for line in ignored:
                problems.report(BAD_MESSAGE_FIELD, f"the first part: {line} (ignored)")
            htype = header.get("htype")
            if htype == "image":
                return self._image(header, parts[1:], received_time)
            if htype == "header":
                self._on_header(header, parts[1:])
            elif htype == "series_end":
                self._on_series_end(header, parts[1:])
            elif isinstance(htype, str):
                msg_number = header.get("msg_number")
                if _is_number_part(msg_number):
                    self._track(msg_number, "message")
                raise StreamingReceiverError(UNKNOWN_HTYPE, f"htype {_short(htype)} (ignored)")
            else:
                raise StreamingReceiverError(BAD_JSON, f"the first part has no text 'htype' "
                                                       f"(got {_short(htype)})")
        except StreamingReceiverError as error:
            self._drop(error.kind, str(error))
        except Exception as error:  # a message no check foresaw must not stop the rank
            logger.debug("unexpected error on a message", exc_info=True)
            self._drop(BAD_MESSAGE, f"{type(error).__name__}: {error}"[:200])
        finally:
            if not self._numbered:
                self._unnumbered += 1
        return None

    def _drop(self, kind: str, message: str) -> None:
        self.counts["dropped"] += 1
        problems.report(kind, f"message dropped: {message}")

    # Series and msg_number ----------------------------------------------------------------

    def _new_series(self, header: SeriesHeader | None, previous: int) -> None:
        self._header = header
        self._previous = previous
        self._unnumbered = 0
        self._without_header_counted = False

    def _track(self, msg_number: int, htype: str) -> None:
        """Notes a message's msg_number: counts the gaps, notes a new series."""
        previous, unnumbered = self._previous, self._unnumbered
        self._previous, self._unnumbered, self._numbered = msg_number, 0, True
        if previous is None:  # the first message since start-up: only the reference
            return
        # A series ends with series_end: when this rank did not receive it (previous >= 0),
        # that message at least is unseen.
        end_unseen = 1 if previous >= 0 else 0
        if htype == "header":
            missed = msg_number + end_unseen
        elif msg_number <= previous:  # the count restarted: a header this rank did not get
            self._new_series(None, msg_number)
            missed = msg_number + end_unseen  # msg_numbers 0 .. msg_number - 1, series_end
        else:
            missed = msg_number - previous - 1
        # Since this rank's previous numbered message: its messages whose number could not be
        # read (each took one), and the other ranks' share of each of its steps.
        excess = missed - unnumbered - self._share * (unnumbered + 1)
        if excess <= 0:
            return
        self.counts["missing_msg_numbers"] += excess
        if self._report_gaps:
            share = (f" beyond the {self._share} other processing ranks' share"
                     if self._share else "")
            after = (f"after {previous}" if htype != "header" and msg_number > previous
                     else "at a new series")
            problems.report(MSG_NUMBER_GAP, f"{htype} msg_number {msg_number} {after}: "
                                            f"messages missing{share}: {excess}", count=excess)

    def _on_header(self, header: dict[str, Any], extra: Sequence[bytes | memoryview]) -> None:
        # Every value is read and checked before any state changes: a header that fails
        # half-way must not leave the previous series' values in place for the new one.
        msg_number = header.get("msg_number", 0)
        if not _is_number_part(msg_number):
            problems.report(BAD_HEADER_METADATA,
                            f"header msg_number {_short(msg_number)} ignored (0 assumed)")
            msg_number = 0
        if len(extra) > 1:
            self._track(msg_number, "header")
            self._new_series(None, msg_number)
            raise StreamingReceiverError(
                BAD_MESSAGE, f"header message of {1 + len(extra)} parts (1 or 2 expected): "
                             f"the series goes on without its header")
        filename = header.get("filename")
        if filename is not None and not isinstance(filename, str):
            problems.report(BAD_HEADER_METADATA, f"header filename {_short(filename)} ignored")
            filename = None
        metadata: dict[str, Any] | None = None
        if extra:
            ignored: list[str] = []
            try:
                metadata = parse_json_object(extra[0], "the header's metadata part", ignored)
            except StreamingReceiverError as error:
                problems.report(BAD_HEADER_METADATA, f"{error} (ignored)")
            for line in ignored:
                problems.report(BAD_HEADER_METADATA, f"the header's metadata part: {line} "
                                                     "(ignored)")
        energy = self._plausible(metadata, self._energy_key, "beam energy", 1.0,
                                 _BEAM_ENERGY_EV)
        distance = self._plausible(metadata, self._distance_key, "detector distance",
                                   self._distance_scale, _DETECTOR_DISTANCE_MM)
        self._track(msg_number, "header")
        self._new_series(SeriesHeader(filename, metadata, energy, distance), msg_number)
        self.counts["headers"] += 1
        logger.info("series %s started (its header reached this rank): beam energy %s eV, "
                    "detector distance %s mm", filename, energy, distance)

    def _plausible(self, metadata: dict[str, Any] | None, path: str, what: str, scale: float,
                   bounds: tuple[float, float]) -> float | None:
        """The number at ``path`` times ``scale`` when within ``bounds``, else None (counted
        when present): a value in the wrong unit is caught rather than used."""
        value = _metadata_value(metadata, path)
        if value is None:
            return None
        scaled = number_or_none(value, scale=scale)
        if scaled is None or not bounds[0] <= scaled <= bounds[1]:
            problems.report(BAD_HEADER_METADATA, f"header {what} '{path}' = {_short(value)} "
                                                 f"ignored (not a number within {bounds[0]:g} "
                                                 f"to {bounds[1]:g} after units; the fallback "
                                                 f"is used)")
            return None
        return scaled

    def _on_series_end(self, header: dict[str, Any],
                       extra: Sequence[bytes | memoryview]) -> None:
        self.counts["series_ends"] += 1
        msg_number = header.get("msg_number")
        if _is_number_part(msg_number):
            self._track(msg_number, "series_end")  # messages lost before the end count too
        self._new_series(None, -1)
        self._numbered = True  # the series is over: what came before does not count
        logger.info("a series ended (its series_end message reached this rank)")
        if extra:
            raise StreamingReceiverError(BAD_MESSAGE, f"series_end message of {1 + len(extra)} "
                                                      f"parts (1 expected): the series ends")

    # Images -------------------------------------------------------------------------------

    def _image(self, header: dict[str, Any], blobs: Sequence[bytes | memoryview],
               received_time: float) -> dict[str, Any]:
        msg_number, frame = header.get("msg_number"), header.get("frame")
        if not _is_number_part(msg_number):
            raise StreamingReceiverError(
                BAD_IMAGE_HEADER, f"image msg_number {_short(msg_number)} is not an integer "
                                  "within 0 to 2**64 - 1")
        self._track(msg_number, "image")
        if not _is_number_part(frame):
            raise StreamingReceiverError(
                BAD_IMAGE_HEADER, f"image frame {_short(frame)} is not an integer within 0 to "
                                  "2**64 - 1")
        image = decode_image(header, blobs)
        series = self._header
        if series is None and not self._without_header_counted:
            self._without_header_counted = True
            problems.report(IMAGE_WITHOUT_HEADER,
                            f"frame {frame}: this rank received no header for the series "
                            f"(another rank did, or it started late): fallback beam energy "
                            f"and detector distance")
        stamp = header.get("timestamp")
        if not (isinstance(stamp, (int, float)) and not isinstance(stamp, bool)
                and _EPOCH_RANGE[0] <= stamp <= _EPOCH_RANGE[1]):
            stamp = received_time
        filename = series.filename if series else None
        self.counts["images"] += 1
        return {
            "image": image,
            "frame": frame,
            "msg_number": msg_number,
            "event_id": f"{filename if filename else 'unknown'}:{frame}",
            "timestamp": float(stamp),
            "beam_energy": series.beam_energy if series else None,
            "detector_distance": series.detector_distance if series else None,
            "filename": filename,
            "metadata": series.metadata if series else None,
            "message": header,
        }


class StreamingReceiverDataEventHandler(PullStreamDataEventHandler):
    """Events from MAX IV streaming-receiver's secondary PUSH port.

    Arguments and errors as :class:`PullStreamDataEventHandler`; the source is the receiver's
    PUSH URL, e.g. ``tcp://receiver-host:9999``.
    """

    stream_name = "a streaming-receiver stream"
    source_name = "a streaming-receiver source"
    url_example = "tcp://receiver-host:9999"
    connect_what = "the streaming-receiver"

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            STREAM_QUEUE_SIZE,
            STREAM_MAX_MESSAGE_MB,
            Parameter("header_beam_energy_key", str, default="photon_energy",
                      description="key of the beam energy (eV) in the header's metadata part "
                                  "('a/b' for nested maps)"),
            Parameter("header_detector_distance_key", str, default="detector_distance",
                      description="key of the detector distance in the header's metadata part "
                                  "('a/b' for nested maps)"),
            Parameter("header_detector_distance_unit", str, default="m", choices=("m", "mm"),
                      description="unit of that detector distance (m: DECTRIS SIMPLON's)"),
        )),
    )

    def make_message_handler(self, *, node_rank: int, node_pool_size: int
                             ) -> StreamingReceiverMessages:
        """The message handling of processing rank ``node_rank`` among ``node_pool_size``
        ranks (rank 0 collects; rank 1 reports ``msg_number_gap``)."""
        get = self._parameters.get
        return StreamingReceiverMessages(
            processing_ranks=node_pool_size - 1, report_gaps=node_rank == 1,
            beam_energy_key=get(_GROUP, "header_beam_energy_key"),
            detector_distance_key=get(_GROUP, "header_detector_distance_key"),
            detector_distance_unit=get(_GROUP, "header_detector_distance_unit"))

    def receive(self, socket: zmq.Socket) -> list[memoryview]:
        """One multipart message, its parts as buffers (not copied)."""
        return [part.buffer for part in socket.recv_multipart(copy=False)]
