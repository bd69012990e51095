# SPDX-License-Identifier: GPL-3.0-or-later
"""Protocols of the data retrieval layer: Data Source, Data Event Handler, Data Retrieval.

The names and keyword-only signatures follow OM's (OM 23 reference documentation,
``data_sources_zmq`` and ``data_event_handlers_zmq``), so OM users find the methods they know.
An event is a ``dict[str, Any]`` whose content only the handler that made it understands.
"""

from typing import Any, ClassVar, Generator, Literal, Protocol

from om.lib.parameters import MonitorParameters, ParameterGroup


class OmDataSourceProtocol(Protocol):
    """One piece of data (a detector frame, a timestamp, a beam energy...) taken from an event.

    Constructed as ``Class(data_source_name=..., parameters=...)``.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]]

    def initialize_data_source(self) -> None:
        """Prepares the source (reads calibration files...), on the processing ranks.

        Raises:
            OmConfigurationError: when a file it needs is missing or malformed.
        """

    def get_data(self, *, event: dict[str, Any]) -> Any:
        """Returns this source's data for ``event``.

        Raises:
            OmDataExtractionError: when the event does not hold valid data for this source.
        """


class OmDataEventHandlerProtocol(Protocol):
    """Turns a source (a stream URL, files...) into events and extracts data from them.

    Constructed as ``Class(source=..., data_sources=..., parameters=...)``.
    """

    def designated_collector_rank(self) -> Literal["first", "last"]:
        """Which MPI rank collects: the first (0) or the last."""

    def skip_rank_finalization(self) -> bool:
        """Whether ranks may exit without the collective finalization (e.g. endless streams)."""

    def initialize_event_handling_on_collecting_node(
        self, *, node_rank: int, node_pool_size: int
    ) -> dict[str, Any] | None:
        """Prepares event handling on the collecting rank.

        Returns:
            Information the processing ranks need (e.g. the address frames are dealt from), or
            None. The parallelization layer hands it to every processing rank (an extension of
            OM's protocol, which returns None).
        """

    def initialize_event_handling_on_processing_node(
        self, *, node_rank: int, node_pool_size: int,
        collecting_node_info: dict[str, Any] | None = None,
    ) -> None:
        """Prepares event handling on a processing rank."""

    def event_generator(
        self, *, node_rank: int, node_pool_size: int
    ) -> Generator[dict[str, Any], None, None]:
        """Yields this rank's events until the source ends or :meth:`stop` is called."""

    def open_event(self, *, event: dict[str, Any]) -> None:
        """Prepares an event for data extraction."""

    def close_event(self, *, event: dict[str, Any]) -> None:
        """Releases what the event holds."""

    def extract_data(self, *, event: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{data source name: data}`` for every data source of the handler.

        Raises:
            OmDataExtractionError: when a data source cannot give its data for this event.
        """

    def initialize_event_data_retrieval(self) -> None:
        """Prepares the retrieval of single events by id.

        Raises:
            NotImplementedError: for streams, which cannot go back to an event.
        """

    def retrieve_event_data(self, event_id: str) -> dict[str, Any]:
        """Returns the data of one event, by id.

        Raises:
            NotImplementedError: for streams.
        """

    def stop(self) -> None:
        """Makes :meth:`event_generator` return soon (called from a signal handler)."""


class OmDataRetrievalProtocol(Protocol):
    """A detector set-up: a Data Event Handler and the Data Sources it extracts.

    Constructed as ``Class(parameters=..., source=...)``; ``om/data_retrieval_layer`` in
    ``monitor.yaml`` names the class.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]]

    def __init__(self, *, parameters: MonitorParameters, source: str) -> None: ...

    def get_data_event_handler(self) -> OmDataEventHandlerProtocol:
        """Returns the Data Event Handler, its Data Sources attached."""
