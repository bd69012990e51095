# SPDX-License-Identifier: GPL-3.0-or-later
"""The DECTRIS Stream V2 set-up (DECTRIS SIMPLON 1.8+ detectors, PSI Jungfraujoch): its Data
Event Handler and Data Sources, one config line.

``om: {data_retrieval_layer: DectrisStreamDataRetrieval}`` in ``monitor.yaml`` selects it; the
monitor's SOURCE argument is the detector's PUSH URL (``tcp://dcu-address:31001``). The events
are made by :class:`~om.data_retrieval_layer.data_event_handler_dectris_stream.
DectrisStreamDataEventHandler` (see its module for their content); docs/source_dectris_stream.md
describes the set-up for users.
"""

from typing import Any, ClassVar

import numpy as np

from om.data_retrieval_layer.data_event_handler_dectris_stream import (
    DectrisStreamDataEventHandler,
)
from om.data_retrieval_layer.data_sources_generic import (
    FALLBACK_PARAMETERS,
    DataSourceFromEvent,
    EventIdFromEvent,
    FloatFromEventOrConfiguration,
    TimestampFromEvent,
    fallback_sources,
)
from om.lib.parameters import MonitorParameters, ParameterGroup


class DectrisStreamImage(DataSourceFromEvent):
    """The image as a float32 (rows, columns) frame, in the detector's units (photons).

    Masked pixels are NaN: those holding the all-ones value of an unsigned integer image
    (65535 for uint16, 4294967295 for uint32: DECTRIS' and Jungfraujoch's value for masked,
    defective or gap pixels) or the most negative value of a signed integer image (-32768 for
    int16: Jungfraujoch's "underload", pixels to exclude). Float images are passed as float32.
    """

    def get_data(self, *, event: dict[str, Any]) -> np.ndarray:
        """Returns the frame: float32 (rows, columns), NaN at masked pixels.

        Raises:
            KeyError: when the event holds no image.
        """
        image = event["image"]
        frame = image.astype(np.float32)
        if image.dtype.kind == "u":
            frame[image == np.iinfo(image.dtype).max] = np.nan
        elif image.dtype.kind == "i":
            frame[image == np.iinfo(image.dtype).min] = np.nan
        return frame


class TimestampDectrisStream(TimestampFromEvent):
    """The image's timestamp: float64 s since the epoch (``series_date`` + ``start_time`` of
    the image message, or the time the processing rank received it when those are absent)."""


class EventIdDectrisStream(EventIdFromEvent):
    """The event's identifier: ``"<series_id>:<image_id>"`` (str)."""


class StartValueOrFallback(FloatFromEventOrConfiguration):
    """A value of the series' start message, or a configured fallback.

    Args:
        data_source_name: the name of the source.
        parameters: the monitor's configuration.
        event_key: the event's key (``beam_energy`` in eV, ``detector_distance`` in mm),
            None when this rank did not receive the series' start message.
        fallback_key: the ``data_retrieval_layer`` key of the fallback (same unit).
    """


class DetectorSpotsDectrisStream(DataSourceFromEvent):
    """Spots found by the detector's software (Jungfraujoch), passed through.

    A dict of float64 (n,) arrays: ``fs`` (column) and ``ss`` (row) in pixels, with the centre
    of pixel ``i`` at ``i`` as sent, and ``intensity`` (photons); None when the image message
    carries no spots (DECTRIS detectors, Jungfraujoch without spot finding).
    """

    def get_data(self, *, event: dict[str, Any]) -> dict[str, np.ndarray] | None:
        """Returns ``{"fs", "ss", "intensity"}`` float64 arrays, or None."""
        return event.get("spots")


class DectrisStreamDataRetrieval:
    """Images from a DECTRIS Stream V2 source: DECTRIS SIMPLON 1.8+ detectors (EIGER2,
    PILATUS4...) and PSI's Jungfraujoch.

    Data Sources: ``detector_data`` (float32 (rows, columns) frame, NaN at masked pixels),
    ``timestamp`` (float64 s), ``event_id`` (``"<series_id>:<image_id>"``), ``beam_energy``
    (eV, the start message's ``incident_energy``), ``detector_distance`` (mm, the start
    message's ``detector_distance`` in m) and ``detector_spots`` (Jungfraujoch's spots or None).
    A processing rank that did not receive the series' start message (each message reaches one
    rank) uses ``fallback_beam_energy_in_eV`` and ``fallback_detector_distance_in_mm``.

    Args:
        parameters: the monitor's configuration.
        source: the detector's PUSH URL, e.g. ``tcp://dcu-address:31001``.

    Raises:
        OmConfigurationError: when the source is not one ZeroMQ URL.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        FALLBACK_PARAMETERS,
        *DectrisStreamDataEventHandler.parameter_groups,
    )

    def __init__(self, *, parameters: MonitorParameters, source: str) -> None:
        data_sources = {
            "timestamp": TimestampDectrisStream(data_source_name="timestamp",
                                                parameters=parameters),
            "event_id": EventIdDectrisStream(data_source_name="event_id", parameters=parameters),
            "detector_data": DectrisStreamImage(data_source_name="detector",
                                                parameters=parameters),
            **fallback_sources(StartValueOrFallback, parameters),
            "detector_spots": DetectorSpotsDectrisStream(data_source_name="detector_spots",
                                                         parameters=parameters),
        }
        self._handler = DectrisStreamDataEventHandler(
            source=source, data_sources=data_sources, parameters=parameters
        )

    def get_data_event_handler(self) -> DectrisStreamDataEventHandler:
        """Returns the Data Event Handler with its Data Sources."""
        return self._handler
