# SPDX-License-Identifier: GPL-3.0-or-later
"""The common part of the Data Event Handlers of detectors that PUSH their images.

A detector (or its receiver) binds a PUSH socket; every processing rank connects its own PULL
socket, and ZeroMQ deals the messages among them, so each image reaches one rank. The
collecting rank does nothing for events. A subclass says how to receive one message and which
decoder turns messages into events.
"""

import threading
import time
from collections.abc import Generator
from typing import Any

import zmq

from om.data_retrieval_layer.data_extraction import (
    StreamWithoutSingleEvents,
    extract_from_data_sources,
)
from om.lib.exceptions import OmConfigurationError
from om.lib.parameters import MonitorParameters, Parameter
from om.lib.waiting_report import WaitingReport
from om.lib.zmq_sockets import SizeLimitedConnection
from om.protocols.data_retrieval_layer import OmDataSourceProtocol

_GROUP = "data_retrieval_layer"

STREAM_QUEUE_SIZE = Parameter(
    "stream_queue_size", int, default=16,
    description="messages queued per processing rank (ZeroMQ receive high-water mark)")
"""The key this handler reads; subclasses declare it in their ``data_retrieval_layer`` group."""

STREAM_MAX_MESSAGE_MB = Parameter(
    "stream_max_message_mb", int, default=257, minimum=1,
    description="largest message part accepted, MiB (ZMQ_MAXMSGSIZE): a larger one ends the "
                "sender's connection before it is allocated; the default holds the largest "
                "image accepted, 2**26 pixels of 4 bytes, plus 1 MiB")
"""The size cap of a message part; subclasses declare it beside :data:`STREAM_QUEUE_SIZE`."""


class PullStreamDataEventHandler(StreamWithoutSingleEvents):
    """Events from one PUSH URL, pulled by every processing rank.

    Subclasses set ``source_name`` (e.g. "a DECTRIS Stream V2 source"), ``url_example``,
    ``connect_what`` (named when the URL cannot be connected) and implement
    :meth:`make_message_handler` and :meth:`receive`. The configuration keys
    ``stream_queue_size`` (group ``data_retrieval_layer``, :data:`STREAM_QUEUE_SIZE`) and
    ``stream_max_message_mb`` (:data:`STREAM_MAX_MESSAGE_MB`) set the receive high-water mark
    and the largest message part accepted.

    Args:
        source: the PUSH URL.
        data_sources: the Data Sources to extract, by name.
        parameters: the monitor's configuration.

    Raises:
        OmConfigurationError: when the source is not one ``tcp://``/``ipc://`` URL.
    """

    source_name = "a stream source"
    url_example = "tcp://host:port"
    connect_what = "the detector stream"

    def __init__(self, *, source: str, data_sources: dict[str, OmDataSourceProtocol],
                 parameters: MonitorParameters) -> None:
        url = source.strip()
        if not url.startswith(("tcp://", "ipc://", "inproc://")) or "," in url:
            raise OmConfigurationError(
                f"source {source!r}: {self.source_name} is one ZeroMQ URL, "
                f"e.g. {self.url_example}")
        self._url = url
        self._data_sources = data_sources
        self._parameters = parameters
        self._stop = threading.Event()
        self._socket: zmq.Socket | None = None
        self._connection: SizeLimitedConnection | None = None
        self._messages: Any = None

    def make_message_handler(self, *, node_rank: int, node_pool_size: int) -> Any:
        """Returns this rank's decoder: an object with ``handle(message, receipt_time)`` giving
        an event or None, and a ``counts`` map."""
        raise NotImplementedError

    def receive(self, socket: zmq.Socket) -> Any:
        """Receives one message from ``socket`` in the form the decoder takes."""
        raise NotImplementedError

    def initialize_event_handling_on_collecting_node(
        self, *, node_rank: int, node_pool_size: int
    ) -> None:
        """Nothing: the processing ranks pull the messages themselves."""

    def initialize_event_handling_on_processing_node(
        self, *, node_rank: int, node_pool_size: int,
        collecting_node_info: dict[str, Any] | None = None,
    ) -> None:
        """Initializes the Data Sources and connects this rank's PULL socket to the source.

        Raises:
            OmConfigurationError: when a Data Source cannot initialize or the URL is invalid.
        """
        for source in self._data_sources.values():
            source.initialize_data_source()
        socket = zmq.Context.instance().socket(zmq.PULL)
        socket.setsockopt(zmq.RCVHWM, max(1, self._parameters.get(_GROUP, "stream_queue_size")))
        socket.setsockopt(zmq.LINGER, 0)
        try:
            self._connection = SizeLimitedConnection(
                socket, self._url, what=self.connect_what,
                max_bytes=self._parameters.get(_GROUP, "stream_max_message_mb") * 1024 * 1024)
        except zmq.ZMQError as error:
            socket.close(0)
            raise OmConfigurationError(
                f"cannot connect to {self.connect_what} {self._url!r}: {error}")
        self._socket = socket
        self._messages = self.make_message_handler(node_rank=node_rank,
                                                   node_pool_size=node_pool_size)

    def event_generator(
        self, *, node_rank: int, node_pool_size: int
    ) -> Generator[dict[str, Any], None, None]:
        """Yields the images this rank receives until :meth:`stop` is called.

        The first processing rank says every few seconds without an image what it received
        meanwhile (:mod:`om.lib.waiting_report`); the others pull from the same socket, so one
        line tells for all.

        Raises:
            OmConfigurationError: when called before
                :meth:`initialize_event_handling_on_processing_node`.
        """
        socket, messages = self._socket, self._messages
        if socket is None or messages is None:
            raise OmConfigurationError("event_generator before initialize_event_handling")
        received = [0]  # messages since the last image
        waiting = WaitingReport(self._url, lambda: (
            f"received {received[0]} messages, none an image (decoder counts: "
            f"{', '.join(f'{k} {n}' for k, n in sorted(messages.counts.items()) if n)})"
            if received[0] else "received nothing (a wrong host or port and a detector that "
            "is not streaming look the same)"))
        reports = node_rank == min(r for r in range(node_pool_size)
                                   if r != self._collector_rank(node_pool_size))
        try:
            while not self._stop.is_set():
                if not socket.poll(100):
                    self._connection.check()
                    if reports:
                        waiting.poll()
                    continue
                received[0] += 1
                event = messages.handle(self.receive(socket), time.time())
                if event is not None:
                    received[0] = 0
                    waiting.data_arrived()
                    yield event
                elif reports:
                    waiting.poll()
        finally:
            self._connection.close()
            socket.close(0)
            self._socket = None

    def _collector_rank(self, node_pool_size: int) -> int:
        return 0 if self.designated_collector_rank() == "first" else node_pool_size - 1

    def stop(self) -> None:
        """Makes :meth:`event_generator` return within 0.1 s."""
        self._stop.set()

    def open_event(self, *, event: dict[str, Any]) -> None:
        """Nothing to open: the event holds its decoded image."""

    def close_event(self, *, event: dict[str, Any]) -> None:
        """Drops the event's image and message."""
        event.pop("image", None)
        event.pop("message", None)

    def extract_data(self, *, event: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{source name: data}`` for every Data Source.

        Raises:
            OmDataExtractionError: naming the source and the image when a source fails.
        """
        return extract_from_data_sources(self._data_sources, event,
                                         f"image {event.get('event_id')}")

    def counters(self) -> dict[str, int]:
        """This rank's message counts (received, images, series messages, drops...)."""
        return dict(self._messages.counts) if self._messages else {}
