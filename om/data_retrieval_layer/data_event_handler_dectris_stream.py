# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Event Handler of a DECTRIS Stream V2 source (DECTRIS SIMPLON 1.8+, PSI Jungfraujoch).

The detector (or Jungfraujoch's writer, with its republish port) **binds a PUSH socket** and
sends one CBOR message per ZeroMQ message (decoded by
:mod:`om.data_retrieval_layer.cbor_stream_v2`). Each processing rank connects its own **PULL**
socket to it; ZeroMQ deals the messages round-robin, so each message, **the start message
too**, reaches one processing rank only. The collecting rank does nothing for events.

Start values: each processing rank keeps the values of the **last start message it received**
(with its ``series_id`` and ``series_unique_id``). An image of that series takes its beam
energy and detector distance from them; an image of a series whose start this rank did not
receive (another rank got it, or the rank joined late) is processed all the same, with the
configured fallbacks, and counted once per series and rank as ``image_without_start``. Images
need nothing from the start message to be decoded: each carries its shape and element type.

An event (for the Data Sources of
:mod:`om.data_retrieval_layer.data_retrieval_dectris_stream`) is a dict:

* ``image``: the 2-D image (rows, columns) of the configured channel, of the element type sent
  (e.g. uint16, uint32, int32, float32), native byte order, read-only or not;
* ``series_id`` (int), ``image_id`` (int), ``event_id`` (str ``"<series_id>:<image_id>"``);
* ``timestamp``: float, s since the epoch: the image's ``series_date`` + ``start_time`` when
  both are sent, else the time this rank received the message;
* ``beam_energy`` (eV) and ``detector_distance`` (mm): from this rank's start message of the
  series, or None (the Data Sources then use the fallbacks);
* ``spots``: Jungfraujoch's spots (``fs``, ``ss``, ``intensity`` float64 arrays) or None;
* ``start``: the :class:`~om.data_retrieval_layer.cbor_stream_v2.StartInfo` used, or None;
* ``message``: the decoded image message (for users' own Data Sources).

Bad input never stops a rank: every unusable message is counted (kinds ``bad_cbor``,
``bad_stream_message``, ``unknown_message_type``, ``unknown_compression``,
``bad_compressed_data``, ``wrong_size``), logged as one line and dropped; optional fields of the
wrong type are ignored and counted as ``bad_stream_metadata``.
"""

import collections
import logging
from typing import Any, ClassVar

import zmq

from om.data_retrieval_layer.cbor_stream_v2 import (
    BAD_MESSAGE,
    WRONG_SIZE,
    StartInfo,
    StreamV2Error,
    decode_message,
    parse_end,
    parse_image,
    parse_start,
)
from om.data_retrieval_layer.pull_stream_handler import (
    STREAM_MAX_MESSAGE_MB,
    STREAM_QUEUE_SIZE,
    PullStreamDataEventHandler,
)
from om.lib.parameters import Parameter, ParameterGroup
from om.lib.problems import problems

logger = logging.getLogger("om")

_GROUP = "data_retrieval_layer"
_SERIES_REMEMBERED = 16

UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
BAD_METADATA = "bad_stream_metadata"
IMAGE_WITHOUT_START = "image_without_start"


class DectrisStreamMessages:
    """Turns the messages one processing rank receives into events (no sockets: testable).

    Args:
        channel: the channel of ``data`` to take the image from (None: the first one sent).
    """

    def __init__(self, channel: str | None = None) -> None:
        self._channel = channel
        self._start: StartInfo | None = None
        self._series_without_start: collections.deque[Any] = collections.deque(
            maxlen=_SERIES_REMEMBERED)
        self.counts = {"messages": 0, "images": 0, "starts": 0, "ends": 0, "dropped": 0}
        """Messages received, images made into events, start and end messages, dropped."""

    @property
    def start(self) -> StartInfo | None:
        """The last start message received (its values), or None."""
        return self._start

    def _drop(self, kind: str, message: str) -> None:
        self.counts["dropped"] += 1
        problems.report(kind, f"message dropped: {message}")

    def handle(self, data: bytes, received_time: float) -> dict[str, Any] | None:
        """Handles one message.

        Args:
            data: the bytes of one ZeroMQ message.
            received_time: when it was received, s since the epoch (the timestamp of images
                that carry none).

        Returns:
            The event of an image message (see the module's documentation); None for other
            messages and for dropped ones (counted).
        """
        self.counts["messages"] += 1
        try:
            message = decode_message(data)
            kind = message["type"]
            if kind == "image":
                return self._image(message, received_time)
            if kind == "start":
                self._on_start(message)
            elif kind == "end":
                series = parse_end(message)
                self.counts["ends"] += 1
                logger.info("series %s ended (its end message reached this rank)", series)
            elif kind == "calibration":  # Jungfraujoch's pedestals/masks: not used here
                pass
            else:
                self._drop(UNKNOWN_MESSAGE_TYPE, f"message type {kind!r}"[:120])
        except StreamV2Error as error:
            self._drop(error.kind, str(error))
        except Exception as error:  # a message no check foresaw must not stop the rank
            logger.debug("unexpected error on a message", exc_info=True)
            self._drop(BAD_MESSAGE, f"{type(error).__name__}: {error}"[:200])
        return None

    def _on_start(self, message: Any) -> None:
        start, ignored = parse_start(message)
        for line in ignored:
            problems.report(BAD_METADATA, f"{line} (ignored)")
        self._start = start
        self.counts["starts"] += 1
        logger.info(
            "series %s started: incident energy %s eV, detector distance %s m, beam centre "
            "(%s, %s) px, images %sx%s px", start.series_id, start.incident_energy,
            start.detector_distance, start.beam_center_x, start.beam_center_y,
            start.image_size_x, start.image_size_y)

    def _start_of(self, series_id: int, unique_id: str | None) -> StartInfo | None:
        start = self._start
        if start is None or start.series_id != series_id:
            return None
        if unique_id and start.series_unique_id and unique_id != start.series_unique_id:
            return None
        return start

    def _image(self, message: Any, received_time: float) -> dict[str, Any] | None:
        image = parse_image(message, self._channel)
        for line in image.ignored:
            problems.report(BAD_METADATA, f"{line} (ignored)")
        start = self._start_of(image.series_id, image.series_unique_id)
        event_id = f"{image.series_id}:{image.image_id}"
        if start is not None and start.image_size_x and start.image_size_y:
            expected = (start.image_size_y, start.image_size_x)
            if image.image.shape != expected:
                raise StreamV2Error(WRONG_SIZE, f"image {event_id} is {list(image.image.shape)}, "
                                                f"the start message declared {list(expected)}")
        if start is None:
            key = (image.series_id, image.series_unique_id)
            if key not in self._series_without_start:
                self._series_without_start.append(key)
                problems.report(
                    IMAGE_WITHOUT_START,
                    f"series {image.series_id}: this rank received no start message (another "
                    f"rank did, or none was sent): fallback beam energy and detector distance")
        self.counts["images"] += 1
        return {
            "image": image.image,
            "series_id": image.series_id,
            "image_id": image.image_id,
            "event_id": event_id,
            "timestamp": image.timestamp if image.timestamp is not None else received_time,
            "beam_energy": start.incident_energy if start else None,
            "detector_distance": (start.detector_distance * 1000.0
                                  if start and start.detector_distance else None),
            "spots": image.spots,
            "start": start,
            "message": message,
        }


class DectrisStreamDataEventHandler(PullStreamDataEventHandler):
    """Events from a DECTRIS Stream V2 PUSH socket (DECTRIS detectors, Jungfraujoch).

    Arguments and errors as :class:`PullStreamDataEventHandler`; the source is the detector's
    PUSH URL, e.g. ``tcp://dcu-address:31001`` (DECTRIS' port) or Jungfraujoch's republish
    port.
    """

    stream_name = "a DECTRIS Stream V2 source"
    source_name = "a DECTRIS Stream V2 source"
    url_example = "tcp://dcu-address:31001"
    connect_what = "the detector stream"

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            Parameter("stream_channel", str, default=None, nullable=True,
                      description="channel of the image messages' data map to use "
                                  "(null: the first one)"),
            STREAM_QUEUE_SIZE,
            STREAM_MAX_MESSAGE_MB,
        )),
    )

    def make_message_handler(self, *, node_rank: int, node_pool_size: int
                             ) -> DectrisStreamMessages:
        """This rank's decoder of DECTRIS Stream V2 messages."""
        return DectrisStreamMessages(self._parameters.get(_GROUP, "stream_channel"))

    def receive(self, socket: zmq.Socket) -> bytes:
        """One CBOR message: a single ZeroMQ frame."""
        return socket.recv()
