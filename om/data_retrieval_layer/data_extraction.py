# SPDX-License-Identifier: GPL-3.0-or-later
"""What every Data Event Handler does the same way: asking its Data Sources for an event's data,
and (for streams) refusing to go back to a single event."""

from typing import Any, Literal

from om.lib.exceptions import OmDataExtractionError, OmInvalidDataError
from om.protocols.data_retrieval_layer import OmDataSourceProtocol


def extract_from_data_sources(data_sources: dict[str, OmDataSourceProtocol],
                              event: dict[str, Any], event_label: str) -> dict[str, Any]:
    """Returns ``{source name: data}`` for every Data Source.

    Args:
        data_sources: the handler's Data Sources, by name.
        event: the event.
        event_label: how the error message names the event (e.g. "frame 12").

    Raises:
        OmDataExtractionError: naming the event and the source when a source fails.
    """
    data: dict[str, Any] = {}
    for name, source in data_sources.items():
        try:
            data[name] = source.get_data(event=event)
        except OmDataExtractionError:
            raise
        except (OmInvalidDataError, KeyError, ValueError, TypeError) as error:
            raise OmDataExtractionError(f"{event_label}: data source {name!r}: {error}")
    return data


class StreamWithoutSingleEvents:
    """Mixin of the handlers of detector streams: rank 0 collects, the stream never ends by
    itself (ranks end on a stop request), and it cannot go back to an event.

    The class attribute ``stream_name`` names the stream in the error message.
    """

    stream_name = "a stream"

    def designated_collector_rank(self) -> Literal["first", "last"]:
        """The collecting rank is rank 0."""
        return "first"

    def skip_rank_finalization(self) -> bool:
        """A detector stream never ends by itself: ranks end on a stop request."""
        return True

    def initialize_event_data_retrieval(self) -> None:
        """Streams cannot go back to an event.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"{self.stream_name} cannot retrieve single events")

    def retrieve_event_data(self, event_id: str) -> dict[str, Any]:
        """Streams cannot go back to an event.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"{self.stream_name} cannot retrieve single events")
