# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Sources that do not depend on the detector: values from the configuration."""

from typing import Any, ClassVar

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
