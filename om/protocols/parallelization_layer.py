# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol of the parallelization layer (method names as OM's)."""

from typing import ClassVar, Protocol

from om.lib.parameters import MonitorParameters, ParameterGroup
from om.protocols.data_retrieval_layer import OmDataRetrievalProtocol
from om.protocols.processing_layer import OmProcessingProtocol


class OmParallelizationProtocol(Protocol):
    """Runs the ranks: events on the processing ranks, results to the collecting rank.

    Constructed as ``Class(data_retrieval_layer=..., processing_layer=..., parameters=...)``.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]]

    def __init__(
        self, *, data_retrieval_layer: OmDataRetrievalProtocol,
        processing_layer: OmProcessingProtocol, parameters: MonitorParameters,
    ) -> None: ...

    def initialize(self) -> None:
        """Initializes every layer on every rank; on failure every rank stops before working.

        Raises:
            OmConfigurationError: with the message of the first rank that failed.
        """

    def start(self) -> None:
        """Runs until the events end or a stop is requested, then finalizes every rank."""

    def request_stop(self) -> None:
        """Asks the ranks to stop soon (safe to call from a signal handler)."""
