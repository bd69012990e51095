# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Sources that do not depend on the detector: values from the configuration."""

from typing import Any, ClassVar

import numpy as np

from om.lib.parameters import MonitorParameters, ParameterGroup


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


class TimestampFromEvent:
    """The timestamp the Data Event Handler stored in the event as ``event["timestamp"]``:
    np.float64, s since the epoch."""

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = ()

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters) -> None:
        self._name = data_source_name

    def initialize_data_source(self) -> None:
        """Nothing to prepare."""

    def get_data(self, *, event: dict[str, Any]) -> np.float64:
        """Returns the timestamp (np.float64, s since the epoch)."""
        return np.float64(event["timestamp"])


class EventIdFromEvent:
    """The identifier the Data Event Handler stored in the event as ``event["event_id"]`` (str)."""

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = ()

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters) -> None:
        self._name = data_source_name

    def initialize_data_source(self) -> None:
        """Nothing to prepare."""

    def get_data(self, *, event: dict[str, Any]) -> str:
        """Returns the event identifier (str)."""
        return str(event["event_id"])


class FloatFromEventOrConfiguration:
    """A number the Data Event Handler found for the event (e.g. the beam energy of a series'
    start message or of a file), else a fallback from ``monitor.yaml``.

    Args:
        data_source_name: the name of the source.
        parameters: the monitor's configuration.
        event_key: the event's key holding the value, None (or absent) when there is none.
        fallback_key: the ``data_retrieval_layer`` key of the fallback (same unit).
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = ()

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters,
                 event_key: str, fallback_key: str) -> None:
        self._name = data_source_name
        self._parameters = parameters
        self._event_key = event_key
        self._fallback_key = fallback_key
        self._fallback = 0.0

    def initialize_data_source(self) -> None:
        """Reads the fallback from the configuration."""
        self._fallback = float(self._parameters.get("data_retrieval_layer", self._fallback_key))

    def get_data(self, *, event: dict[str, Any]) -> float:
        """Returns the event's value (float), else the fallback."""
        value = event.get(self._event_key)
        return float(value) if value is not None else self._fallback
