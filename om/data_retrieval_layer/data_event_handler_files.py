# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Event Handler of HDF5 files: one image per event, from files listed or notified.

Source (the ``SOURCE`` argument of ``om_monitor.py``): comma-separated items, each

* a file path or a glob pattern (``run1_master.h5``, ``/data/run*_master.h5``): NXmx master
  files, data files or plain HDF5 files (:mod:`om.data_retrieval_layer.nxmx_files`); relative
  paths are relative to the current folder. List master files *or* their data files, not both.
* a ZeroMQ URL (``tcp://writer-host:5600``, ``ipc://...``): the PUB socket on which
  Jungfraujoch's writer (``jfjoch_writer -f``) announces each finalized data file with one JSON
  message (``filename`` relative to the writer's folder, ``nimages``, ``file_number``,
  ``incident_energy_eV``, ``detector_distance_m``, ...). This is *follow mode*: the monitor
  processes each announced file and runs until stopped.

Files listed: the collecting rank expands the patterns and scans the files once (so every
problem is counted once and every processing rank sees the same list) and hands the list of
image blocks to the processing ranks. The images, numbered 0, 1, 2, ... over the whole list
(unreadable ones left out), are shared: processing rank ``r`` of ``n`` (``r = node_rank - 1``)
takes images ``r, r + n, r + 2n, ...``: deterministic, each image once. When all are done the
event generator returns, the processing ranks end and the monitor exits.

Follow mode: every processing rank subscribes to the URLs at start-up (notifications sent
before that are not seen: ZeroMQ PUB/SUB) and, after the listed files, takes image ``i`` of a
notified file when ``(file_number + i) % n == r``. Problems of a notification or of the file
it names are reported by the first processing rank only, so they are counted once.

An event is ``{"image": array as stored, "event_id": "<file>//<index>", "timestamp": float,
"beam_energy_eV": float | None, "detector_distance_mm": float | None, "pixel_mask": bool array
| None}``. The image is read in the event generator: an image that cannot be read is counted
(``image_read_error``) and the next one read.
"""

import os
import threading
from typing import Any, Callable, ClassVar, Generator, Iterator, Literal

import zmq

from om.data_retrieval_layer.data_extraction import extract_from_data_sources
from om.data_retrieval_layer.hdf5_direct_read import usable_image
from om.data_retrieval_layer.nxmx_files import (
    FileImages,
    ImageBlock,
    ImageReader,
    expand_patterns,
    one_line,
    scan_file,
)
from om.lib.exceptions import OmConfigurationError, OmDataExtractionError, OmInvalidDataError
from om.lib.input_limits import (
    MAX_JSON_HEADER_BYTES,
    is_int_in,
    number_or_none,
    parse_json_object,
)
from om.lib.zmq_sockets import SizeLimitedConnection
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.problems import problems
from om.lib.read_ahead import read_ahead
from om.lib.waiting_report import WaitingReport
from om.protocols.data_retrieval_layer import OmDataSourceProtocol

_GROUP = "data_retrieval_layer"
_URL_PREFIXES = ("tcp://", "ipc://", "inproc://")
_POLL_MS = 100

BAD_NOTIFICATION = "bad_notification"
NOTIFIED_PATH_OUTSIDE = "notified_path_outside_folder"
IMAGE_READ_ERROR = "image_read_error"


def split_source(source: str) -> tuple[list[str], list[str]]:
    """Splits the source into (file paths or patterns, notification URLs).

    Raises:
        OmConfigurationError: when the source names nothing.
    """
    items = [item.strip() for item in source.split(",") if item.strip()]
    if not items:
        raise OmConfigurationError(f"source {source!r}: give HDF5 files, glob patterns or the "
                                   "URL of Jungfraujoch's file notifications, comma-separated")
    urls = [item for item in items if item.startswith(_URL_PREFIXES)]
    patterns = [item for item in items if not item.startswith(_URL_PREFIXES)]
    for item in patterns:
        if "://" in item:
            raise OmConfigurationError(f"source item {item!r}: not a file and not a ZeroMQ "
                                       "tcp:// or ipc:// URL")
    return patterns, urls


def parse_event_id(event_id: str) -> tuple[str, int]:
    """Splits ``"<file>//<index>"`` into the file name and the image index.

    Raises:
        OmDataExtractionError: when the id has no ``//<index>`` suffix.
    """
    filename, separator, index = event_id.rpartition("//")
    if not separator or not filename or not index.isdigit():
        raise OmDataExtractionError(f"event id {event_id!r} is not '<file>//<image index>'")
    return filename, int(index)


class Hdf5FilesDataEventHandler:
    """Events from HDF5 files (one image each), listed or notified by Jungfraujoch's writer.

    Args:
        source: comma-separated file paths, glob patterns and notification URLs (module
            documentation).
        data_sources: the Data Sources to extract, by name.
        parameters: the monitor's configuration (keys ``files_data_hdf5_path``,
            ``files_follow_directory``, ``files_read_ahead``, ``files_memory_map``).

    Raises:
        OmConfigurationError: when the source names nothing or has a non-ZeroMQ URL.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            Parameter("files_data_hdf5_path", str, default=None, nullable=True,
                      description="data set of the images in every file (null: NXmx "
                      "/entry/data/data_NNNNNN links, /entry/data/data, /data/data, /raw)"),
            Parameter("files_follow_directory", str, default=None, nullable=True,
                      description="folder the file names of Jungfraujoch's notifications are "
                      "relative to (the writer's folder; null: the current folder)"),
            Parameter("files_read_ahead", int, default=2, minimum=0,
                      description="images each processing rank reads ahead in a thread of its "
                      "own, while it processes the current one (0: read in the event loop)"),
            Parameter("files_memory_map", bool, default=True,
                      description="map uncompressed images into memory instead of copying "
                      "them, where a read lease on the file can be had (a file of this user "
                      "on a local file system, open for writing by nobody); otherwise copy"),
        )),
    )

    def __init__(self, *, source: str, data_sources: dict[str, OmDataSourceProtocol],
                 parameters: MonitorParameters) -> None:
        self._patterns, self._urls = split_source(source)
        self._source = source
        self._data_sources = data_sources
        self._parameters = parameters
        self._files: list[FileImages] = []
        memory_map = parameters.get(_GROUP, "files_memory_map")
        # The event generator's (it may run in a thread), and retrieve_event_data's.
        self._reader = ImageReader(memory_map=memory_map)
        self._single_event_reader = ImageReader(memory_map=memory_map)
        self._sockets: list[zmq.Socket] = []
        self._connections: list[SizeLimitedConnection] = []
        self._stop = threading.Event()
        self._retrieval_ready = False

    def _data_path(self) -> str | None:
        return self._parameters.get(_GROUP, "files_data_hdf5_path")

    # Set-up ------------------------------------------------------------------------------

    def designated_collector_rank(self) -> Literal["first", "last"]:
        """The collecting rank is rank 0."""
        return "first"

    def skip_rank_finalization(self) -> bool:
        """Listed files end by themselves; follow mode runs until stopped."""
        return bool(self._urls)

    def scan(self) -> list[FileImages]:
        """Expands the source's patterns and scans the files, reporting every problem.

        Returns:
            The files with readable images, in order.

        Raises:
            OmConfigurationError: when no file is found and no notification URL is given.
        """
        names, expansion_problems = expand_patterns(self._patterns)
        for kind, message in expansion_problems:
            problems.report(kind, message)
        files: list[FileImages] = []
        frame_shape = None
        for name in names:
            found = scan_file(name, data_path=self._data_path(), frame_shape=frame_shape)
            for kind, message in found.problems:
                problems.report(kind, message)
            if found.blocks:
                frame_shape = found.blocks[0].frame_shape
                files.append(found)
        if not names and not self._urls:
            raise OmConfigurationError(f"source {self._source!r}: no file found")
        return files

    def initialize_event_handling_on_collecting_node(
        self, *, node_rank: int, node_pool_size: int
    ) -> dict[str, Any]:
        """Scans the listed files; returns ``{"files": [...]}`` (image blocks, metadata).

        Raises:
            OmConfigurationError: when no file is found and no notification URL is given.
        """
        return {"files": [found.to_dict() for found in self.scan()]}

    def initialize_event_handling_on_processing_node(
        self, *, node_rank: int, node_pool_size: int,
        collecting_node_info: dict[str, Any] | None = None,
    ) -> None:
        """Takes the file list, initializes the Data Sources and subscribes to the
        notification URLs.

        Raises:
            OmConfigurationError: when the collecting rank gave no file list, a Data Source
                cannot initialize, or a URL cannot be connected.
        """
        if not collecting_node_info or "files" not in collecting_node_info:
            raise OmConfigurationError("the collecting rank gave no file list")
        self._files = [FileImages.from_dict(value) for value in collecting_node_info["files"]]
        for source in self._data_sources.values():
            source.initialize_data_source()
        self._subscribe()

    def _subscribe(self) -> None:
        context = zmq.Context.instance()
        for url in self._urls:
            socket = context.socket(zmq.SUB)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            try:
                # A notification is a small JSON object: a larger part ends the connection.
                connection = SizeLimitedConnection(socket, url, max_bytes=MAX_JSON_HEADER_BYTES,
                                                   what="the file notifications")
            except zmq.ZMQError as error:
                socket.close(0)
                self._close_sockets()
                raise OmConfigurationError(
                    f"cannot connect to the file notifications {url!r}: {error}")
            self._sockets.append(socket)
            self._connections.append(connection)

    def _close_sockets(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections = []
        for socket in self._sockets:
            socket.close(0)
        self._sockets = []

    # Events ------------------------------------------------------------------------------

    def _event(self, found: FileImages, block: ImageBlock, local: int) -> dict[str, Any] | None:
        index = block.first + local
        try:
            image = self._reader.read(block, local)
        except OmInvalidDataError as error:
            problems.report(IMAGE_READ_ERROR, str(error))
            return None
        metadata = found.metadata
        return {
            "image": image,
            "event_id": f"{found.filename}//{index}",
            "timestamp": metadata.timestamp(index),
            "beam_energy_eV": metadata.beam_energy_eV,
            "detector_distance_mm": metadata.detector_distance_mm,
            "pixel_mask": self._reader.pixel_mask(found.filename, metadata.pixel_mask),
        }

    def _listed_images(self, share: int, shares: int
                       ) -> Iterator[tuple[FileImages, ImageBlock, int]]:
        position = 0
        for found in self._files:
            for block in found.blocks:
                for local in range(block.count):
                    if block.excluded and block.is_excluded(local):
                        continue
                    if position % shares == share:
                        yield found, block, local
                    position += 1

    def _notified_file(self, message: bytes, reporter: bool) -> tuple[FileImages, int] | None:
        def report(kind: str, text: str) -> None:
            if reporter:
                problems.report(kind, text)

        ignored: list[str] = []
        try:
            notification = parse_json_object(message, "notification", ignored=ignored)
        except OmInvalidDataError as error:
            report(BAD_NOTIFICATION, f"{one_line(error)}: {message[:80]!r}")
            return None
        for line in ignored:
            report(BAD_NOTIFICATION, f"notification: {line} (ignored)")
        filename = notification.get("filename")
        if not isinstance(filename, str) or not filename or "\0" in filename:
            report(BAD_NOTIFICATION, f"no 'filename' string: {message[:80]!r}")
            return None
        file_number = notification.get("file_number", 0)
        if not is_int_in(file_number, 0, 2**63 - 1):
            file_number = 0
        filename = self._inside_follow_directory(filename, report)
        if filename is None:
            return None
        found = scan_file(filename, data_path=self._data_path())
        for kind, text in found.problems:
            report(kind, f"notified {text}")
        metadata = found.metadata
        energy = number_or_none(notification.get("incident_energy_eV"), 0.0)
        if metadata.beam_energy_eV is None and energy:
            metadata.beam_energy_eV = energy
        distance = number_or_none(notification.get("detector_distance_m"), 0.0, scale=1000.0)
        if metadata.detector_distance_mm is None and distance:
            metadata.detector_distance_mm = distance
        return found, file_number

    def _notified_file_guarded(self, message: bytes, reporter: bool
                               ) -> tuple[FileImages, int] | None:
        """:meth:`_notified_file`; whatever else it raises is counted as
        ``bad_notification``: a notification never ends the rank's events."""
        try:
            return self._notified_file(message, reporter)
        except Exception as error:  # no check foresaw it
            if reporter:
                problems.report(BAD_NOTIFICATION, f"{type(error).__name__}: "
                                                  f"{one_line(error)}"[:200])
            return None

    def _inside_follow_directory(self, filename: str,
                                 report: Callable[[str, str], None]) -> str | None:
        """The notified file's path, symbolic links resolved, when it is inside
        ``files_follow_directory`` (the current folder when null); else None, counted as
        ``notified_path_outside_folder``: a notification must not make the monitor read (or
        lease, or map) any file of the user's."""
        directory = self._parameters.get(_GROUP, "files_follow_directory")
        configured = self._parameters.resolve_path(directory) if directory else os.getcwd()
        folder = os.path.realpath(configured)
        path = os.path.realpath(os.path.join(folder, filename))
        if os.path.commonpath((folder, path)) != folder or path == folder:
            report(NOTIFIED_PATH_OUTSIDE, f"notified file {filename[:120]!r} is not inside the "
                                          f"followed folder {folder} (symbolic links resolved): "
                                          "ignored")
            return None
        # The name as the writer gave it (event ids stay those of the writer's folder).
        return os.path.join(configured, filename)

    def event_generator(
        self, *, node_rank: int, node_pool_size: int
    ) -> Generator[dict[str, Any], None, None]:
        """Yields this rank's images: its share of the listed files, then (follow mode) of
        each notified file, until the end of the list (no URL) or :meth:`stop`.

        With ``files_read_ahead`` > 0 the images are read (and the notifications received) in
        a thread of their own, that many images ahead (:mod:`om.lib.read_ahead`)."""
        share, shares = node_rank - 1, node_pool_size - 1
        depth = self._parameters.get(_GROUP, "files_read_ahead")
        events = (read_ahead(lambda: self._events(share, shares), depth,
                             name=f"om-read-ahead-rank-{node_rank}")
                  if depth > 0 else self._events(share, shares))
        try:
            for event in events:
                # A mapped image is checked here, where it is used, not where it was read.
                try:
                    event["image"] = usable_image(event["image"])
                except OmInvalidDataError as error:
                    problems.report(IMAGE_READ_ERROR, f"{event['event_id']}: {error}")
                    continue
                yield event
        finally:
            events.close()

    def _events(self, share: int, shares: int) -> Generator[dict[str, Any], None, None]:
        try:
            for found, block, local in self._listed_images(share, shares):
                if self._stop.is_set():
                    return
                event = self._event(found, block, local)
                if event is not None:
                    yield event
            if not self._sockets:
                return
            poller = zmq.Poller()
            for socket in self._sockets:
                poller.register(socket, zmq.POLLIN)
            unusable = [0]  # notifications since the last usable file
            # The first processing rank says what it waits for (every rank gets every
            # notification: one line tells for all).
            waiting = WaitingReport(", ".join(self._urls), lambda: (
                f"received {unusable[0]} notifications, none of a file with images (see the "
                "problems above)" if unusable[0] else
                "received no file notification (is the writer publishing on this URL?)"))
            while not self._stop.is_set():
                if share == 0:
                    waiting.poll()
                for connection in self._connections:
                    connection.check()
                for socket, _ in poller.poll(_POLL_MS):
                    notified = self._notified_file_guarded(socket.recv(), share == 0)
                    if notified is None or not notified[0].blocks:
                        unusable[0] += 1
                        continue
                    unusable[0] = 0
                    waiting.data_arrived()
                    found, file_number = notified
                    for block in found.blocks:
                        for local in range(block.count):
                            if self._stop.is_set():
                                return
                            if block.is_excluded(local) or (
                                    file_number + block.first + local) % shares != share:
                                continue
                            event = self._event(found, block, local)
                            if event is not None:
                                yield event
        finally:
            self._close_sockets()
            self._reader.close()

    def stop(self) -> None:
        """Makes :meth:`event_generator` return within 0.1 s (after the current image)."""
        self._stop.set()

    def open_event(self, *, event: dict[str, Any]) -> None:
        """Nothing to open: the generator read the image."""

    def close_event(self, *, event: dict[str, Any]) -> None:
        """Drops the event's image."""
        event.pop("image", None)

    def extract_data(self, *, event: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{source name: data}`` for every Data Source.

        Raises:
            OmDataExtractionError: naming the event and the source when a source fails.
        """
        return extract_from_data_sources(self._data_sources, event,
                                         f"event {event.get('event_id')}")

    # Single events -----------------------------------------------------------------------

    def initialize_event_data_retrieval(self) -> None:
        """Initializes the Data Sources (reads calibration files) for
        :meth:`retrieve_event_data`.

        Raises:
            OmConfigurationError: when a Data Source cannot initialize.
        """
        for source in self._data_sources.values():
            source.initialize_data_source()
        self._retrieval_ready = True

    def retrieve_event_data(self, event_id: str) -> dict[str, Any]:
        """Returns the data of one image by id, ``"<file>//<index>"`` (as in ``event_id``).

        Raises:
            OmDataExtractionError: when the id is malformed, the file or image cannot be
                read, or a Data Source fails; the message names the problem.
        """
        if not self._retrieval_ready:
            self.initialize_event_data_retrieval()
        filename, index = parse_event_id(event_id)
        found = scan_file(filename, data_path=self._data_path())
        if found.problems and not found.blocks:
            raise OmDataExtractionError(f"event {event_id}: {found.problems[0][1]}")
        try:
            block, local = found.locate(index)
        except OmInvalidDataError as error:
            raise OmDataExtractionError(f"event {event_id}: {error}")
        try:
            image = usable_image(self._single_event_reader.read(block, local))
        except OmInvalidDataError as error:
            raise OmDataExtractionError(f"event {event_id}: {error}")
        metadata = found.metadata
        event = {"image": image, "event_id": event_id, "timestamp": metadata.timestamp(index),
                 "beam_energy_eV": metadata.beam_energy_eV,
                 "detector_distance_mm": metadata.detector_distance_mm,
                 "pixel_mask": self._single_event_reader.pixel_mask(filename, metadata.pixel_mask)}
        return self.extract_data(event=event)
