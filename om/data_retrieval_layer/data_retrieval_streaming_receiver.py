# SPDX-License-Identifier: GPL-3.0-or-later
"""The MAX IV streaming-receiver set-up (its secondary PUSH port): its Data Event Handler and
Data Sources, one config line.

``om: {data_retrieval_layer: StreamingReceiverDataRetrieval}`` in ``monitor.yaml`` selects it;
the monitor's SOURCE argument is the receiver's PUSH URL (``tcp://receiver-host:9999``). The
events are made by :class:`~om.data_retrieval_layer.data_event_handler_streaming_receiver.
StreamingReceiverDataEventHandler` (see its module for the format and the events);
docs/source_streaming_receiver.md describes the set-up for users.
"""

from typing import ClassVar

from om.data_retrieval_layer.data_event_handler_streaming_receiver import (
    StreamingReceiverDataEventHandler,
)
from om.data_retrieval_layer.data_sources_generic import (
    FALLBACK_PARAMETERS,
    fallback_sources,
)
from om.data_retrieval_layer.data_sources_streaming_receiver import (
    EventIdStreamingReceiver,
    HeaderValueOrFallback,
    StreamingReceiverImage,
    TimestampStreamingReceiver,
)
from om.lib.parameters import MonitorParameters, ParameterGroup


class StreamingReceiverDataRetrieval:
    """Images from MAX IV's streaming-receiver secondary port (DECTRIS EIGER and PILATUS,
    X-Spectrum Lambda and the cameras it serves).

    Data Sources: ``detector_data`` (float32 (rows, columns) frame, NaN at masked pixels; the
    first threshold of multi-threshold images), ``timestamp`` (float64 s), ``event_id``
    (``"<filename>:<frame>"``), ``beam_energy`` (eV, the header metadata's ``photon_energy``)
    and ``detector_distance`` (mm, the header metadata's ``detector_distance``). A processing
    rank that did not receive the series' header (each message reaches one rank) uses
    ``fallback_beam_energy_in_eV`` and ``fallback_detector_distance_in_mm``.

    Args:
        parameters: the monitor's configuration.
        source: the receiver's PUSH URL, e.g. ``tcp://receiver-host:9999``.

    Raises:
        OmConfigurationError: when the source is not one ZeroMQ URL.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        FALLBACK_PARAMETERS,
        *StreamingReceiverImage.parameter_groups,
        *StreamingReceiverDataEventHandler.parameter_groups,
    )

    def __init__(self, *, parameters: MonitorParameters, source: str) -> None:
        data_sources = {
            "timestamp": TimestampStreamingReceiver(data_source_name="timestamp",
                                                    parameters=parameters),
            "event_id": EventIdStreamingReceiver(data_source_name="event_id",
                                                 parameters=parameters),
            "detector_data": StreamingReceiverImage(data_source_name="detector",
                                                    parameters=parameters),
            **fallback_sources(HeaderValueOrFallback, parameters),
        }
        self._handler = StreamingReceiverDataEventHandler(
            source=source, data_sources=data_sources, parameters=parameters
        )

    def get_data_event_handler(self) -> StreamingReceiverDataEventHandler:
        """Returns the Data Event Handler with its Data Sources."""
        return self._handler
