# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Sources that do not depend on the detector: values from the configuration, values
the Data Event Handler stored in the event, and the fallback keys the set-ups share."""

from typing import Any, ClassVar

import numpy as np

from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup

FALLBACK_PARAMETERS = ParameterGroup("data_retrieval_layer", (
    Parameter("fallback_beam_energy_in_eV", float, required=True,
              description="beam energy when the event carries none, eV"),
    Parameter("fallback_detector_distance_in_mm", float, required=True,
              description="detector distance when the event carries none, mm"),
))
"""The configured beam energy and detector distance of the events that carry none (every
event, for a source that never carries them); every Data Retrieval class declares them."""


class FloatValueFromConfiguration:
    """A number read once from ``monitor.yaml`` and returned for every event.

    Used for values a detector stream does not carry, e.g. the beam energy (eV) or the
    detector distance (mm).

    Args:
        data_source_name: the name of the source (e.g. ``"beam_energy"``).
        parameters: the monitor's configuration.
        group: the configuration group of the key.
        key: the configuration key holding the value (declared required by the owner).
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = ()

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters,
                 group: str = "data_retrieval_layer", key: str) -> None:
        self._name = data_source_name
        self._parameters = parameters
        self._group = group
        self._key = key
        self._value = 0.0

    def initialize_data_source(self) -> None:
        """Reads the value from the configuration."""
        self._value = float(self._parameters.get(self._group, self._key))

    def get_data(self, *, event: dict[str, Any]) -> float:
        """Returns the configured value (float) whatever the event."""
        return self._value


class DataSourceFromEvent:
    """Base of the Data Sources that read only the event: no configuration key, nothing to
    prepare. Subclasses implement ``get_data``.

    Args:
        data_source_name: the name of the source.
        parameters: the monitor's configuration (not read).
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = ()

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters) -> None:
        self._name = data_source_name

    def initialize_data_source(self) -> None:
        """Nothing to prepare."""


class TimestampFromEvent(DataSourceFromEvent):
    """The timestamp the Data Event Handler stored in the event as ``event["timestamp"]``:
    np.float64, s since the epoch."""

    def get_data(self, *, event: dict[str, Any]) -> np.float64:
        """Returns the timestamp (np.float64, s since the epoch)."""
        return np.float64(event["timestamp"])


class EventIdFromEvent(DataSourceFromEvent):
    """The identifier the Data Event Handler stored in the event as ``event["event_id"]`` (str)."""

    def get_data(self, *, event: dict[str, Any]) -> str:
        """Returns the event identifier (str)."""
        return str(event["event_id"])


class FloatFromEventOrConfiguration(FloatValueFromConfiguration):
    """A number the Data Event Handler found for the event (e.g. the beam energy of a series'
    start message or of a file), else a fallback from ``monitor.yaml``.

    Args:
        data_source_name: the name of the source.
        parameters: the monitor's configuration.
        event_key: the event's key holding the value, None (or absent) when there is none.
        fallback_key: the ``data_retrieval_layer`` key of the fallback (same unit).
    """

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters,
                 event_key: str, fallback_key: str) -> None:
        # The fallback is a configured value like any other: the base reads it.
        super().__init__(data_source_name=data_source_name, parameters=parameters,
                         key=fallback_key)
        self._event_key = event_key

    def get_data(self, *, event: dict[str, Any]) -> float:
        """Returns the event's value (float), else the fallback."""
        value = event.get(self._event_key)
        return float(value) if value is not None else self._value


def fallback_sources(
    source_class: type[FloatFromEventOrConfiguration], parameters: MonitorParameters, *,
    beam_energy_key: str = "beam_energy", detector_distance_key: str = "detector_distance",
) -> dict[str, FloatFromEventOrConfiguration]:
    """The ``beam_energy`` (eV) and ``detector_distance`` (mm) Data Sources of a set-up: the
    event's values under the given keys, else the keys of :data:`FALLBACK_PARAMETERS`.

    Args:
        source_class: :class:`FloatFromEventOrConfiguration` or a subclass naming where the
            set-up's values come from.
        parameters: the monitor's configuration.
        beam_energy_key: the event's key of the beam energy.
        detector_distance_key: the event's key of the detector distance.
    """
    return {
        "beam_energy": source_class(
            data_source_name="beam_energy", parameters=parameters,
            event_key=beam_energy_key, fallback_key="fallback_beam_energy_in_eV"),
        "detector_distance": source_class(
            data_source_name="detector_distance", parameters=parameters,
            event_key=detector_distance_key, fallback_key="fallback_detector_distance_in_mm"),
    }
