# SPDX-License-Identifier: GPL-3.0-or-later
"""Receiving the monitor's broadcasts and talking to its responding socket, never blocking a GUI.

The collecting rank publishes two-part messages ``[tag, payload]`` on a ZeroMQ PUB socket
(``omdata`` for the crystallography GUI, ``omframedata`` for the frame viewer), the payload
being msgpack decoded with :func:`om.lib.serialization.unpack` (never unpickled).

:class:`Subscriber` owns a SUB socket in a thread of its own: the thread waits on the socket
with a short poll timeout, decodes and checks every message, counts and logs malformed ones
(wrong number of parts, unexpected tag, bad msgpack, missing key, wrong type, dtype or shape)
and skips them, and keeps only the newest good message per tag. A GUI asks for that message
with :meth:`Subscriber.take` from a timer at its refresh rate: the GUI thread never touches the
network. The SUB socket reconnects by itself (short reconnect intervals, ZMTP heartbeats), so a
restarted monitor is picked up within a few seconds.

:class:`RequestClient` sends one request at a time on a REQ socket without blocking: the GUI
calls :meth:`RequestClient.poll` from a timer until the reply or the timeout comes; after a
timeout the socket is thrown away and the next request uses a fresh one.

Nothing in this module imports Qt.
"""

import dataclasses
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import zmq

from om.lib.curve import client_options_from_environment
from om.lib.exceptions import OmInvalidDataError
from om.lib.problems import ProblemCounter
from om.lib.serialization import unpack
from om.lib.zmq_sockets import SizeLimitedConnection

logger = logging.getLogger("om.gui")

OMDATA_TAG = "omdata"
OMFRAMEDATA_TAG = "omframedata"
ONDAFRAMEDATA_TAG = "ondaframedata"


class MalformedMessageError(OmInvalidDataError):
    """A received message that cannot be shown; ``kind`` is the short name it is counted under.

    Kinds: ``wrong_number_of_parts``, ``unexpected_tag``, ``bad_payload`` (not msgpack or a bad
    array map), ``not_a_map``, ``missing_key``, ``bad_value`` (wrong type, dtype or shape).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------
# Checking the content of the messages
# ----------------------------------------------------------------------------------------------


def _bad(key: str, message: str) -> MalformedMessageError:
    return MalformedMessageError("bad_value", f"{key}: {message}")


def _type_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype.str} and shape {list(value.shape)}"
    return type(value).__name__


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(key, f"expected a number, got {_type_name(value)}")
    return float(value)


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"expected an integer, got {_type_name(value)}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _bad(key, f"expected a boolean, got {_type_name(value)}")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(key, f"expected a string, got {_type_name(value)}")
    return value


def _optional_string(key: str, value: Any) -> str | None:
    return None if value is None else _string(key, value)


def _array(ndim: int) -> Callable[[str, Any], np.ndarray]:
    def check(key: str, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise _bad(key, f"expected a {ndim}-d numeric array, got {_type_name(value)}")
        if value.dtype.kind not in "fiu":
            raise _bad(key, f"expected a real numeric dtype, got {value.dtype.str}")
        if value.ndim != ndim:
            raise _bad(key, f"expected a {ndim}-d array, got shape {list(value.shape)}")
        return value

    return check


def _image(key: str, value: Any) -> np.ndarray:
    image = _array(2)(key, value)
    if image.size == 0:
        raise _bad(key, f"empty image of shape {list(image.shape)}")
    return image


def _beam_center(key: str, value: Any) -> tuple[float, float]:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu" or value.shape != (2,):
            raise _bad(key, f"expected [col, row], got {_type_name(value)}")
        return float(value[0]), float(value[1])
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _bad(key, f"expected [col, row], got {_type_name(value)}")
    return _number(key, value[0]), _number(key, value[1])


def _problems(key: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _bad(key, f"expected a map of counts, got {_type_name(value)}")
    counts = {}
    for kind, count in value.items():
        if not isinstance(kind, str):
            raise _bad(key, f"expected string keys, got {_type_name(kind)}")
        counts[kind] = _integer(f"{key}[{kind!r}]", count)
    return counts


def _lost_ranks(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(rank, str) and isinstance(why, str) for rank, why in value.items()):
        raise _bad(key, f"expected a map of str to str, got {_type_name(value)}")
    return dict(value)


_GEOMETRY_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "beam_energy": _number,
    "detector_distance": _number,
    "pixel_size": _number,
    "beam_center": _beam_center,
}

OMDATA_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "timestamp": _number,
    "hit_rate_timestamp_history": _array(1),
    "hit_rate_history": _array(1),
    "hit_rate": _number,
    "virtual_powder_plot": _image,
    "peakogram": _array(2),
    "peakogram_radius_bin_size": _number,
    "peakogram_intensity_bin_size": _number,
    "num_events": _integer,
    "num_hits": _integer,
    "events_per_second": _number,
    **_GEOMETRY_FIELDS,
    "problems": _problems,
    "responding_url": _optional_string,
}
"""The keys of an ``omdata`` message and the check (and normalisation) of each value."""

OMFRAMEDATA_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "frame_data": _image,
    "peak_list_x_in_frame": _array(1),
    "peak_list_y_in_frame": _array(1),
    "peak_list_intensity": _array(1),
    "timestamp": _number,
    "event_id": _string,
    "frame_is_hit": _boolean,
    "num_peaks": _integer,
    **_GEOMETRY_FIELDS,
}
"""The keys of an ``omframedata`` message and the check (and normalisation) of each value."""


OMDATA_OPTIONAL_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "saturation_rate_history": _array(1),
    "saturation_rate": _number,
    "saturation_rate_alarm": _number,
    "num_saturated_frames": _integer,
    "radial_profile_radius": _array(1),
    "radial_profile_latest": _array(1),
    "radial_profile_hits": _array(1),
    "radial_profile_non_hits": _array(1),
    "radial_profile_num_hits": _integer,
    "radial_profile_num_non_hits": _integer,
    "ring_intensity_timestamp_history": _array(1),
    "ring_intensity_history": _array(1),
    "ring_radius": _beam_center,
    "processing_ranks_lost": _lost_ranks,
    "monitor_restarts": _integer,
}
"""``omdata`` keys of newer monitors (saturation, radial profile, lost ranks and restarts):
checked when present, so that the GUIs still show an older monitor's messages."""

OMFRAMEDATA_OPTIONAL_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "peak_list_saturated_pixels": _array(1),
    "num_saturated_pixels": _integer,
}
"""``omframedata`` keys of newer monitors, checked when present."""


def _check_optional(payload: dict, fields: Mapping[str, Callable[[str, Any], Any]]) -> dict:
    return {key: check(key, payload[key]) for key, check in fields.items() if key in payload}


def _check_fields(payload: Any, fields: Mapping[str, Callable[[str, Any], Any]]) -> dict:
    if not isinstance(payload, dict):
        raise MalformedMessageError(
            "not_a_map", f"payload is a {_type_name(payload)}, not a map"
        )
    missing = [key for key in fields if key not in payload]
    if missing:
        raise MalformedMessageError("missing_key", f"missing key(s): {', '.join(missing)}")
    return {key: check(key, payload[key]) for key, check in fields.items()}


def _same_lengths(data: dict, keys: tuple[str, ...]) -> None:
    lengths = {key: len(data[key]) for key in keys}
    if len(set(lengths.values())) > 1:
        raise _bad(" / ".join(keys), f"lengths differ: {lengths}")


def validate_omdata(payload: Any) -> dict[str, Any]:
    """Checks a decoded ``omdata`` payload and returns its known keys, normalised.

    Numbers become ``float`` (counts stay ``int``), ``beam_center`` a ``(col, row)`` tuple;
    arrays are kept as they are (read-only views of the received bytes). Unknown keys are
    dropped, so a newer monitor that sends more keys is still shown.

    Raises:
        MalformedMessageError: naming the first key that is missing or wrong.
    """
    data = _check_fields(payload, OMDATA_FIELDS)
    data.update(_check_optional(payload, OMDATA_OPTIONAL_FIELDS))
    _same_lengths(data, ("hit_rate_timestamp_history", "hit_rate_history"))
    if "saturation_rate_history" in data:
        _same_lengths(data, ("hit_rate_timestamp_history", "saturation_rate_history"))
    profiles = [key for key in ("radial_profile_radius", "radial_profile_latest",
                                "radial_profile_hits", "radial_profile_non_hits") if key in data]
    _same_lengths(data, tuple(profiles))
    if "ring_intensity_history" in data:
        _same_lengths(data, ("ring_intensity_timestamp_history", "ring_intensity_history"))
    # Optional: only while frames are saved; its content is checked where it is shown.
    saving = payload.get("hit_saving")
    data["hit_saving"] = saving if isinstance(saving, dict) else None
    return data


def validate_omframedata(payload: Any) -> dict[str, Any]:
    """Checks a decoded ``omframedata`` payload and returns its known keys, normalised.

    Raises:
        MalformedMessageError: naming the first key that is missing or wrong.
    """
    data = _check_fields(payload, OMFRAMEDATA_FIELDS)
    data.update(_check_optional(payload, OMFRAMEDATA_OPTIONAL_FIELDS))
    _same_lengths(data, ("peak_list_x_in_frame", "peak_list_y_in_frame", "peak_list_intensity",
                         *(("peak_list_saturated_pixels",)
                           if "peak_list_saturated_pixels" in data else ())))
    return data


def _peak_list(key: str, value: Any) -> dict[str, np.ndarray]:
    if not isinstance(value, dict):
        raise _bad(key, f"expected a map of fs, ss, intensity lists, got {_type_name(value)}")
    peaks = {}
    for name in ("fs", "ss", "intensity"):
        items = value.get(name)
        if not isinstance(items, (list, np.ndarray)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            raise _bad(f"{key}/{name}", f"expected a list of numbers, got {_type_name(items)}")
        peaks[name] = np.asarray(items, dtype=np.float64)
    _same_lengths(peaks, ("fs", "ss", "intensity"))
    return peaks


ONDAFRAMEDATA_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "detector_data": _image,
    "peak_list": _peak_list,
    "beam_energy": _number,
    "detector_distance": _number,
    "timestamp": _number,
    "event_id": _string,
    "frame_is_hit": _boolean,
}
"""The keys of an ``ondaframedata`` message (the frames for CrystFEL, docs/crystfel.md: the
slab frame and the monitor's peaks) and the check of each value."""


def validate_ondaframedata(payload: Any) -> dict[str, Any]:
    """Checks a decoded ``ondaframedata`` payload and returns its known keys, normalised
    (``peak_list`` becomes a map of float64 arrays).

    Raises:
        MalformedMessageError: naming the first key that is missing or wrong.
    """
    return _check_fields(payload, ONDAFRAMEDATA_FIELDS)


VALIDATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    OMDATA_TAG: validate_omdata,
    OMFRAMEDATA_TAG: validate_omframedata,
    ONDAFRAMEDATA_TAG: validate_ondaframedata,
}


def decode_message(parts: list[bytes | memoryview], validators: Mapping[str, Callable] = VALIDATORS):
    """Decodes and checks one multipart message.

    Args:
        parts: the frames of the message, expected ``[tag, payload]``.
        validators: the accepted tags and the check of each one's payload.

    Returns:
        ``(tag, data)``.

    Raises:
        MalformedMessageError: when the message cannot be shown (``kind`` says why).
    """
    if len(parts) != 2:
        raise MalformedMessageError(
            "wrong_number_of_parts", f"message with {len(parts)} part(s), expected 2 (tag, payload)"
        )
    tag = bytes(parts[0]).decode("utf-8", errors="replace")
    validator = validators.get(tag)
    if validator is None:
        raise MalformedMessageError("unexpected_tag", f"unexpected tag {tag[:40]!r}")
    try:
        payload = unpack(parts[1])
    except OmInvalidDataError as error:
        raise MalformedMessageError("bad_payload", f"{tag}: {error}") from None
    try:
        return tag, validator(payload)
    except MalformedMessageError as error:
        raise MalformedMessageError(error.kind, f"{tag}: {error}") from None


# ----------------------------------------------------------------------------------------------
# The subscriber
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReceivedMessage:
    """One good message, as a GUI gets it from :meth:`Subscriber.take`.

    Attributes:
        tag: the message's tag.
        data: the checked content (see :func:`validate_omdata`, :func:`validate_omframedata`).
        sequence: increasing number of the good messages received by this subscriber.
        received_at: when it was received, in seconds since the epoch (local clock).
        received_monotonic: when it was received, on the ``time.monotonic`` clock.
    """

    tag: str
    data: dict[str, Any]
    sequence: int
    received_at: float
    received_monotonic: float


MAX_MESSAGE_BYTES = (1 << 26) * 4 + (1 << 20)
"""The default largest broadcast message part a :class:`Subscriber` accepts, bytes."""


class Subscriber:
    """Receives the monitor's broadcasts in a thread and keeps the newest good message per tag.

    Args:
        url: the monitor's ``data_broadcast_url`` to connect to (e.g. ``tcp://host:12321``).
        validators: the tags to subscribe to and the check of each one's payload (by default
            both ``omdata`` and ``omframedata``).
        receive_hwm: the SUB socket's receive high-water mark: few messages wait in the socket,
            older ones are dropped by ZeroMQ when the receiver cannot keep up.
        reconnect_interval_ms, reconnect_interval_max_ms: the first and the largest interval
            between two attempts to reconnect to a lost publisher.
        heartbeat_interval_ms, heartbeat_timeout_ms: ZMTP heartbeats: a publisher that has
            sent nothing (not even a heartbeat reply) for the timeout is dropped and reconnected
            to, which catches a silently vanished host too.
        poll_timeout_ms: how often the thread looks at its stop flag.
        context: the ZeroMQ context (by default the process's shared one).
        log_interval: the minimum time between two log lines about one kind of malformed message.
        max_message_bytes: the largest message part accepted (``ZMQ_MAXMSGSIZE``): a larger
            one ends the connection before it is allocated (the SUB socket then reconnects).
            The default, :data:`MAX_MESSAGE_BYTES`, holds the largest frame the sources accept
            (2**26 pixels of float32) plus 1 MiB.
        socket_options: more options of the SUB socket, e.g. CurveZMQ client keys
            (:func:`om.lib.curve.client_options`); None: the CURVE keys named by the
            environment, if any (:func:`om.lib.curve.client_options_from_environment`).

    Raises:
        OmConfigurationError: when the environment names unusable CURVE key files.
    """

    def __init__(
        self,
        url: str,
        validators: Mapping[str, Callable[[Any], dict[str, Any]]] | None = None,
        *,
        receive_hwm: int = 4,
        reconnect_interval_ms: int = 250,
        reconnect_interval_max_ms: int = 2000,
        heartbeat_interval_ms: int = 1000,
        heartbeat_timeout_ms: int = 3000,
        poll_timeout_ms: int = 100,
        context: zmq.Context | None = None,
        log_interval: float = 5.0,
        max_message_bytes: int | None = None,
        socket_options: Mapping[int, Any] | None = None,
    ) -> None:
        self.url = url
        self._validators = dict(VALIDATORS if validators is None else validators)
        if not self._validators:
            raise ValueError("a subscriber needs at least one tag")
        self._options = {
            zmq.LINGER: 0,
            zmq.RCVHWM: receive_hwm,
            zmq.RECONNECT_IVL: reconnect_interval_ms,
            zmq.RECONNECT_IVL_MAX: reconnect_interval_max_ms,
            zmq.HEARTBEAT_IVL: heartbeat_interval_ms,
            zmq.HEARTBEAT_TIMEOUT: heartbeat_timeout_ms,
            zmq.HEARTBEAT_TTL: heartbeat_timeout_ms,
            zmq.TCP_KEEPALIVE: 1,
            **(client_options_from_environment() if socket_options is None else socket_options),
        }
        self._max_message_bytes = (MAX_MESSAGE_BYTES if max_message_bytes is None
                                   else max_message_bytes)
        self._poll_timeout_ms = poll_timeout_ms
        self._context = context if context is not None else zmq.Context.instance()
        self._problems = ProblemCounter(log_interval=log_interval)
        self._lock = threading.Lock()
        self._latest: dict[str, ReceivedMessage] = {}
        self._taken: dict[str, int] = {}
        self._num_received: dict[str, int] = {tag: 0 for tag in self._validators}
        self._sequence = 0
        self._last_monotonic: float | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        """The subscribed tags."""
        return tuple(self._validators)

    @property
    def running(self) -> bool:
        """Whether the receiving thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Connects and starts receiving (at most once).

        Raises:
            zmq.ZMQError: when the URL is not a valid ZeroMQ endpoint.
        """
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"om-gui-subscriber {self.url}", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self, timeout: float = 2.0) -> None:
        """Stops receiving and closes the socket (safe to call more than once)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the subscriber thread for %s did not stop in time", self.url)

    def take(self, tag: str) -> ReceivedMessage | None:
        """Returns the newest good message of ``tag`` if it was not taken yet, else None."""
        with self._lock:
            message = self._latest.get(tag)
            if message is None or self._taken.get(tag) == message.sequence:
                return None
            self._taken[tag] = message.sequence
            return message

    def latest(self, tag: str) -> ReceivedMessage | None:
        """Returns the newest good message of ``tag`` (taken or not), or None."""
        with self._lock:
            return self._latest.get(tag)

    def num_received(self, tag: str | None = None) -> int:
        """The number of good messages received (of ``tag``, or of all tags)."""
        with self._lock:
            if tag is None:
                return sum(self._num_received.values())
            return self._num_received.get(tag, 0)

    def malformed_counts(self) -> dict[str, int]:
        """The number of malformed messages skipped so far, by kind."""
        return self._problems.counts()

    @property
    def num_malformed(self) -> int:
        """The total number of malformed messages skipped so far."""
        return sum(self._problems.counts().values())

    def seconds_since_last_message(self) -> float | None:
        """Seconds since the newest good message arrived (None before the first one)."""
        with self._lock:
            last = self._last_monotonic
        return None if last is None else time.monotonic() - last

    # -- the receiving thread ------------------------------------------------------------------

    def _run(self) -> None:
        socket = None
        try:
            socket = self._context.socket(zmq.SUB)
            for option, value in self._options.items():
                socket.setsockopt(option, value)
            for tag in self._validators:
                socket.setsockopt(zmq.SUBSCRIBE, tag.encode())
            connection = SizeLimitedConnection(socket, self.url, what="the monitor's broadcast",
                                               max_bytes=self._max_message_bytes,
                                               counter=self._problems)
        except zmq.ZMQError as error:
            self._start_error = zmq.ZMQError(
                error.errno, f"cannot connect to {self.url!r}: {error.strerror}"
            )
            if socket is not None:
                socket.close(linger=0)
            self._started.set()
            return
        self._started.set()
        logger.info("subscribed to %s on %s", ", ".join(self._validators), self.url)
        try:
            while not self._stop.is_set():
                if not socket.poll(self._poll_timeout_ms, zmq.POLLIN):
                    connection.check()
                    continue
                while not self._stop.is_set():
                    try:
                        parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle([part.buffer for part in parts])
        except zmq.ZMQError as error:  # only when the context is terminated under us
            logger.error("subscriber on %s stopped: %s", self.url, error)
        finally:
            connection.close()
            socket.close(linger=0)

    def _handle(self, parts: list[memoryview]) -> None:
        try:
            tag, data = decode_message(parts, self._validators)
        except MalformedMessageError as error:
            self._problems.report(error.kind, f"skipped a malformed message: {error}")
            return
        except Exception as error:  # a bug in a check must not kill the receiver
            logger.exception("unexpected error while checking a message")
            self._problems.report("bad_value", f"skipped a message: {error!r}")
            return
        now_monotonic = time.monotonic()
        with self._lock:
            self._sequence += 1
            self._latest[tag] = ReceivedMessage(
                tag=tag,
                data=data,
                sequence=self._sequence,
                received_at=time.time(),
                received_monotonic=now_monotonic,
            )
            self._num_received[tag] += 1
            self._last_monotonic = now_monotonic


# ----------------------------------------------------------------------------------------------
# Requests to the monitor's responding socket
# ----------------------------------------------------------------------------------------------


def resolve_responding_url(responding_url: str, data_url: str | None = None) -> str:
    """Replaces a wildcard host in the monitor's responding URL with the data URL's host.

    A monitor that binds ``tcp://*:12322`` or ``tcp://0.0.0.0:12322`` may announce that URL;
    a client connects to the host it receives data from instead.
    """
    parsed = urllib.parse.urlsplit(responding_url)
    if parsed.scheme != "tcp" or parsed.hostname not in ("*", "0.0.0.0") or data_url is None:
        return responding_url
    data_host = urllib.parse.urlsplit(data_url).hostname
    if not data_host or data_host in ("*", "0.0.0.0"):
        data_host = "127.0.0.1"
    return f"tcp://{data_host}:{parsed.port}"


@dataclasses.dataclass(frozen=True)
class RequestResult:
    """The outcome of one request.

    Attributes:
        request: the request sent.
        url: where it was sent.
        ok: True when a reply starting with ``b"ok"`` came back.
        reply: the reply (frames joined by spaces), or None when none came.
        error: why there is no good reply (an error reply, a timeout, a socket error), or None.
    """

    request: bytes
    url: str
    ok: bool
    reply: bytes | None
    error: str | None

    @property
    def text(self) -> str:
        """A one-line human-readable description (for a status bar)."""
        if self.reply is not None:
            reply = self.reply[:200].decode("utf-8", errors="replace")
            return f"monitor replied: {reply}" if self.ok else f"monitor refused: {reply}"
        return str(self.error)


class RequestClient:
    """One request at a time on a REQ socket, never blocking the caller.

    :meth:`send` queues the request, :meth:`poll` (called from a timer) returns None until the
    reply or the timeout comes. After a timeout or an error the socket is closed and the next
    request uses a fresh one (a REQ socket that lost its reply can never send again).

    Args:
        timeout: seconds to wait for a reply.
        context: the ZeroMQ context (by default the process's shared one).
        socket_options: more options of the REQ socket, e.g. CurveZMQ client keys; None: the
            CURVE keys named by the environment, if any (as :class:`Subscriber`).

    Raises:
        OmConfigurationError: when the environment names unusable CURVE key files.
    """

    def __init__(self, timeout: float = 2.0, context: zmq.Context | None = None,
                 socket_options: Mapping[int, Any] | None = None) -> None:
        self.timeout = timeout
        self._context = context if context is not None else zmq.Context.instance()
        self._socket_options = dict(client_options_from_environment() if socket_options is None
                                    else socket_options)
        self._socket: zmq.Socket | None = None
        self._socket_url: str | None = None
        self._pending: tuple[bytes, str, float] | None = None
        self._result: RequestResult | None = None

    @property
    def busy(self) -> bool:
        """Whether a request waits for its reply (or its result was not polled yet)."""
        return self._pending is not None or self._result is not None

    def send(self, url: str, request: bytes) -> None:
        """Sends ``request`` to ``url`` without waiting; the outcome comes from :meth:`poll`.

        Raises:
            RuntimeError: when the previous request's outcome was not polled yet.
        """
        if self.busy:
            raise RuntimeError("a request is already waiting for its reply")
        if self._socket is not None and self._socket_url != url:
            self._close()
        try:
            if self._socket is None:
                socket = self._context.socket(zmq.REQ)
                socket.setsockopt(zmq.LINGER, 0)
                for option, value in self._socket_options.items():
                    socket.setsockopt(option, value)
                try:
                    socket.connect(url)
                except zmq.ZMQError:
                    socket.close(linger=0)
                    raise
                self._socket, self._socket_url = socket, url
            self._socket.send(request, zmq.NOBLOCK)
        except zmq.ZMQError as error:
            self._close()
            self._result = RequestResult(request, url, False, None, f"cannot send to {url}: {error}")
            return
        self._pending = (request, url, time.monotonic() + self.timeout)

    def poll(self) -> RequestResult | None:
        """Returns the outcome of the request once known (then forgets it), else None."""
        if self._result is not None:
            result, self._result = self._result, None
            return result
        if self._pending is None or self._socket is None:
            return None
        request, url, deadline = self._pending
        try:
            if self._socket.poll(0, zmq.POLLIN):
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
                self._pending = None
                reply = b" ".join(frames)
                if reply.startswith(b"ok"):
                    return RequestResult(request, url, True, reply, None)
                return RequestResult(request, url, False, reply, "the monitor refused the request")
        except zmq.ZMQError as error:
            self._pending = None
            self._close()
            return RequestResult(request, url, False, None, f"error while waiting for {url}: {error}")
        if time.monotonic() >= deadline:
            self._pending = None
            self._close()
            return RequestResult(
                request, url, False, None, f"no reply from {url} within {self.timeout:g} s"
            )
        return None

    def close(self) -> None:
        """Closes the socket and forgets any pending request."""
        self._pending = None
        self._result = None
        self._close()

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket, self._socket_url = None, None
