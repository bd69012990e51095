# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Event Handler of a JUNGFRAU 1M's ZeroMQ streams (slsReceiver).

The collecting rank subscribes once to the module streams and assembles complete frames
(:mod:`om.data_retrieval_layer.jungfrau_frame_assembler`); each processing rank takes whole
frames from it with a :class:`~om.data_retrieval_layer.frame_distribution.FrameReceiver`
(shared memory on one host), each frame going to one rank only. An event is one frame:
``{"metadata": {...}, "images": [read-only buffer per stream]}``; its buffers are valid until
:meth:`Jungfrau1MZmqDataEventHandler.close_event`.
"""

import logging
import os
import signal
import threading
from collections.abc import Generator
from typing import Any, ClassVar

from om.data_retrieval_layer.data_extraction import (
    StreamWithoutSingleEvents,
    extract_from_data_sources,
)
from om.data_retrieval_layer.frame_assembler_process import FrameAssemblerProcess
from om.data_retrieval_layer.frame_distribution import MAX_SLOTS, FrameReceiver, new_secret
from om.data_retrieval_layer.jungfrau_frame_assembler import (
    BYTES_PER_PIXEL,
    MODULE_FS,
    JungfrauFrameAssembler,
)
from om.lib.exceptions import OmConfigurationError
from om.lib.monitor_health import health
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.problems import log_format
from om.protocols.data_retrieval_layer import OmDataSourceProtocol

logger = logging.getLogger("om")

_GROUP = "data_retrieval_layer"
_ROWS_PER_FRAME = 1024


def _stop_the_monitor(reason: str) -> None:
    """Stops the monitor as a stop signal would: frame assembly has ended for good, and a
    monitor without frames must not run on as if it were waiting for the detector. The job
    then ends with :data:`~om.parallelization_layer.mpi.EXIT_RESTART`: ``om_monitor.py -n N``
    starts it again."""
    logger.error("the monitor stops: %s", reason)
    health.request_restart(reason)
    os.kill(os.getpid(), signal.SIGTERM)


class Jungfrau1MZmqDataEventHandler(StreamWithoutSingleEvents):
    """Events from a JUNGFRAU 1M's module streams.

    Args:
        source: the module stream URLs, comma-separated in module order, as slsReceiver
            publishes them, e.g. ``tcp://127.0.0.1:30001,tcp://127.0.0.1:30002`` (2 streams,
            or 4 for two interfaces per module).
        data_sources: the Data Sources to extract, by name.
        parameters: the monitor's configuration.

    Raises:
        OmConfigurationError: when the source does not name 2 or 4 ``tcp://``/``ipc://`` URLs.
    """

    stream_name = "a JUNGFRAU ZeroMQ stream"

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            Parameter("frame_assembly_timeout", float, default=0.5,
                      description="wait for the missing modules of a frame, s"),
            Parameter("frame_assembly_process", bool, default=True,
                      description="assemble frames in a process of their own beside the "
                      "collecting rank (else in a thread of it)"),
            Parameter("frame_distribution_host", str, default="127.0.0.1",
                      description="interface the collecting rank deals frames on"),
            Parameter("frame_queue_size", int, default=8, minimum=1, maximum=MAX_SLOTS - 1,
                      description="frames queued per processing rank before frames are dropped"),
            Parameter("frame_shared_memory", bool, default=True,
                      description="hand frames to processing ranks on the same host through "
                      "shared memory (else over TCP)"),
        )),
    )

    def __init__(self, *, source: str, data_sources: dict[str, OmDataSourceProtocol],
                 parameters: MonitorParameters) -> None:
        self._urls = [url.strip() for url in source.split(",") if url.strip()]
        if len(self._urls) not in (2, 4):
            raise OmConfigurationError(
                f"source {source!r}: a JUNGFRAU 1M needs 2 module stream URLs (or 4 half-module "
                f"ones), comma-separated, got {len(self._urls)}"
            )
        for url in self._urls:
            if not url.startswith(("tcp://", "ipc://", "inproc://")):
                raise OmConfigurationError(f"source URL {url!r} is not a ZeroMQ tcp:// or ipc:// URL")
        self._data_sources = data_sources
        self._parameters = parameters
        self._assembler: JungfrauFrameAssembler | FrameAssemblerProcess | None = None
        self._endpoint: str | None = None
        self._secret = b""
        self._receiver: FrameReceiver | None = None
        self._stop = threading.Event()

    def initialize_event_handling_on_collecting_node(
        self, *, node_rank: int, node_pool_size: int
    ) -> dict[str, Any]:
        """Starts the frame assembler (in a process of its own with ``frame_assembly_process``,
        else in a thread); returns ``{"frame_endpoint": URL, "frame_secret": bytes}`` for the
        processing ranks (sent to them through MPI only: the secret lets a client take frames).

        Raises:
            OmConfigurationError: when a stream URL is malformed or the dealer's socket cannot
                bind.
        """
        settings = {
            "stream_urls": self._urls,
            "distribution_host": self._parameters.get(_GROUP, "frame_distribution_host"),
            "rows_per_stream": _ROWS_PER_FRAME // len(self._urls),
            "assembly_timeout": self._parameters.get(_GROUP, "frame_assembly_timeout"),
            "expected_receivers": node_pool_size - 1,
        }
        secret = new_secret()
        if self._parameters.get(_GROUP, "frame_assembly_process"):
            self._assembler = FrameAssemblerProcess(assembler=settings, secret=secret,
                                                    log_format=log_format(node_rank),
                                                    on_unexpected_end=_stop_the_monitor)
        else:
            self._assembler = JungfrauFrameAssembler(**settings, secret=secret,
                                                     on_failure=_stop_the_monitor)
        self._assembler.start()
        return {"frame_endpoint": self._assembler.endpoint, "frame_secret": secret}

    def initialize_event_handling_on_processing_node(
        self, *, node_rank: int, node_pool_size: int,
        collecting_node_info: dict[str, Any] | None = None,
    ) -> None:
        """Initializes the Data Sources (reads calibration files) and notes the frame endpoint.

        Raises:
            OmConfigurationError: when a Data Source cannot initialize.
        """
        if not collecting_node_info or not {"frame_endpoint", "frame_secret"} <= set(
                collecting_node_info):
            raise OmConfigurationError("the collecting rank gave no frame endpoint and secret")
        self._endpoint = collecting_node_info["frame_endpoint"]
        self._secret = collecting_node_info["frame_secret"]
        for source in self._data_sources.values():
            source.initialize_data_source()

    def event_generator(
        self, *, node_rank: int, node_pool_size: int
    ) -> Generator[dict[str, Any], None, None]:
        """Yields frames dealt to this rank until :meth:`stop` is called.

        The rank holds at most ``frame_queue_size`` + 1 frames: the one being processed and
        those waiting.
        """
        self._receiver = FrameReceiver(
            self._endpoint, n_slots=self._parameters.get(_GROUP, "frame_queue_size") + 1,
            slot_bytes=_ROWS_PER_FRAME * MODULE_FS * BYTES_PER_PIXEL, secret=self._secret,
            shared_memory=self._parameters.get(_GROUP, "frame_shared_memory"))
        try:
            while not self._stop.is_set():
                frame = self._receiver.receive(100)
                if frame is not None:
                    yield {"metadata": frame.metadata, "images": frame.images, "frame": frame}
        finally:
            self._receiver.close()
            self._receiver = None

    def stop(self) -> None:
        """Makes :meth:`event_generator` return within 0.1 s; stops the assembler."""
        self._stop.set()
        if self._assembler is not None:
            self._assembler.stop()

    def open_event(self, *, event: dict[str, Any]) -> None:
        """Nothing to open: the event holds its buffers."""

    def close_event(self, *, event: dict[str, Any]) -> None:
        """Gives the event's frame slot back to the collecting rank; drops its buffers."""
        event["images"] = []
        frame = event.pop("frame", None)
        if frame is not None and self._receiver is not None:
            self._receiver.release(frame)

    def extract_data(self, *, event: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{source name: data}`` for every Data Source.

        Raises:
            OmDataExtractionError: naming the source and frame when a source fails.
        """
        return extract_from_data_sources(self._data_sources, event,
                                         f"frame {event.get('metadata', {}).get('frame_number')}")

    def counters(self) -> dict[str, int]:
        """Frames forwarded and acquisitions ended, as seen by the assembler (collecting rank)."""
        if self._assembler is None:
            return {}
        return {"frames_assembled": self._assembler.frames_forwarded,
                "acquisitions_ended": self._assembler.acquisitions_ended}
