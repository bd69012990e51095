# SPDX-License-Identifier: GPL-3.0-or-later
"""The JUNGFRAU 1M ZeroMQ set-up: its Data Event Handler and Data Sources, one config line.

``om: {data_retrieval_layer: Jungfrau1MZmqDataRetrieval}`` in ``monitor.yaml`` selects it.
"""

from typing import ClassVar

from om.data_retrieval_layer.data_event_handler_jungfrau_zmq import (
    Jungfrau1MZmqDataEventHandler,
)
from om.data_retrieval_layer.data_sources_generic import (
    FALLBACK_PARAMETERS,
    FloatValueFromConfiguration,
)
from om.data_retrieval_layer.data_sources_jungfrau_zmq import (
    EventIdJungfrau1MZmq,
    Jungfrau1MZmq,
    SaturatedPixelsJungfrau1MZmq,
    TimestampJungfrau1MZmq,
)
from om.lib.parameters import MonitorParameters, ParameterGroup


class Jungfrau1MZmqDataRetrieval:
    """JUNGFRAU 1M frames from slsReceiver's module streams.

    Data Sources: ``timestamp`` (float64 s), ``event_id`` (str), ``detector_data`` (the
    (1024, 1024) frame), ``detector_saturated_pixels`` (int, its saturated pixels), ``beam_energy`` (eV) and ``detector_distance`` (mm) from the keys
    ``fallback_beam_energy_in_eV`` and ``fallback_detector_distance_in_mm``.

    Args:
        parameters: the monitor's configuration.
        source: the comma-separated module stream URLs.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        FALLBACK_PARAMETERS,
        *Jungfrau1MZmq.parameter_groups,
        *Jungfrau1MZmqDataEventHandler.parameter_groups,
    )

    def __init__(self, *, parameters: MonitorParameters, source: str) -> None:
        data_sources = {
            "timestamp": TimestampJungfrau1MZmq(data_source_name="timestamp",
                                                parameters=parameters),
            "event_id": EventIdJungfrau1MZmq(data_source_name="event_id", parameters=parameters),
            "detector_data": Jungfrau1MZmq(data_source_name="detector", parameters=parameters),
            # After detector_data: the count its calibration made.
            "detector_saturated_pixels": SaturatedPixelsJungfrau1MZmq(
                data_source_name="detector_saturated_pixels", parameters=parameters),
            "beam_energy": FloatValueFromConfiguration(
                data_source_name="beam_energy", parameters=parameters,
                key="fallback_beam_energy_in_eV"),
            "detector_distance": FloatValueFromConfiguration(
                data_source_name="detector_distance", parameters=parameters,
                key="fallback_detector_distance_in_mm"),
        }
        self._handler = Jungfrau1MZmqDataEventHandler(
            source=source, data_sources=data_sources, parameters=parameters
        )

    def get_data_event_handler(self) -> Jungfrau1MZmqDataEventHandler:
        """Returns the Data Event Handler with its Data Sources."""
        return self._handler
