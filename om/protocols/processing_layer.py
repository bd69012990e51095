# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocol of the processing layer (method names and signatures as OM's)."""

from typing import Any, ClassVar, Protocol

from om.lib.parameters import MonitorParameters, ParameterGroup


class OmProcessingProtocol(Protocol):
    """An analysis: per-event work on the processing ranks, aggregation on the collecting rank.

    Constructed as ``Class(parameters=...)``; ``om/processing_layer`` names the class.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]]

    def __init__(self, *, parameters: MonitorParameters) -> None: ...

    def initialize_processing_node(self, *, node_rank: int, node_pool_size: int) -> None:
        """Prepares a processing rank (geometry, masks, ...)."""

    def initialize_collecting_node(self, *, node_rank: int, node_pool_size: int) -> None:
        """Prepares the collecting rank (binds its sockets, allocates aggregates)."""

    def process_data(
        self, *, node_rank: int, node_pool_size: int, data: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        """Processes one event's extracted data on a processing rank.

        Returns:
            The result (msgpack-encodable: numbers, strings, lists, maps, numpy arrays) and the
            rank that made it.
        """

    def wait_for_data(self, *, node_rank: int, node_pool_size: int) -> None:
        """Called on the collecting rank when no result is waiting; may block for a few ms."""

    def collect_data(
        self, *, node_rank: int, node_pool_size: int, processed_data: tuple[dict[str, Any], int]
    ) -> dict[int, dict[str, Any]] | None:
        """Aggregates one result on the collecting rank.

        Returns:
            None, or feedback for the processing ranks (OM's rule): ``{rank: map}``, the
            collecting rank's own number meaning every processing rank. Each map (msgpack-
            encodable) is merged into the data of the next event each of those ranks extracts.
        """

    def end_processing_on_processing_node(
        self, *, node_rank: int, node_pool_size: int
    ) -> dict[str, Any] | None:
        """Called when a processing rank's events end; may return a last result."""

    def end_processing_on_collecting_node(self, *, node_rank: int, node_pool_size: int) -> None:
        """Called once every processing rank has ended; prints the final summary."""
