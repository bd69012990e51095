# SPDX-License-Identifier: GPL-3.0-or-later
"""Saving frames for CrystFEL while the monitor runs (configuration group ``hit_saving``).

Each processing rank writes its chosen frames with their peak lists into CXI files of its own
(:class:`HitSaver`, :mod:`om.lib.cxi_writer`), one file at a time: written as ``NAME.cxi.part``,
renamed to ``NAME.cxi`` when complete (``frames_per_file`` frames, ``max_seconds_per_file``, or
the monitor stopping). The rank reports each completed file, and its counters, in its results;
the collecting rank (:class:`HitsList`) appends one ``NAME.cxi //i`` line per frame of each
completed file to ``hits.lst`` and keeps the totals the broadcast and the final summary show.
The collecting rank also writes ``hits.geom`` (:mod:`om.lib.cxi_geometry`). The file layout and
the indexamajig command line: ``docs/hit_saving.md``.

Faults: an output directory that cannot be created or written, or a disk with less free space
than ``min_free_disk_space_gb``, stops the monitor at start-up with one line naming the key. A
write that fails later (disk full...) or free space falling below the floor stops saving on that
rank (counted as ``hit_saving_stopped``, logged once, shown in the broadcast) while the monitor
goes on. Nothing is overwritten: a file name that exists is never reused.
"""

import dataclasses
import logging
import os
import shutil
import threading
import time
from typing import Any

import numpy as np

import om
from om.lib.cxi_geometry import cxi_geometry_text
from om.lib.cxi_writer import CxiFile, FrameRecord, to_int32_photons
from om.lib.event_rate import EventRateMeter
from om.lib.exceptions import OmConfigurationError
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.problems import problems

logger = logging.getLogger("om")

GROUP = "hit_saving"
HITS_LIST = "hits.lst"
GEOMETRY = "hits.geom"
_GB = 1e9

HIT_SAVING_GROUP = ParameterGroup(GROUP, (
    Parameter("frames", str, default="none", choices=("none", "hits", "all"),
              description="frames saved: none, hits (and every non_hit_interval-th non-hit) "
              "or all"),
    Parameter("non_hit_interval", int, default=0, minimum=0,
              description="with frames: hits, also save every Nth non-hit of each rank, for "
              "the background (0: none)"),
    Parameter("output_directory", str, default=None, nullable=True,
              description="folder of the CXI files, hits.lst and hits.geom (created if "
              "needed); required unless frames is none"),
    Parameter("file_prefix", str, default="om",
              description="start of the CXI file names: PREFIX-START-rRANK-NNNN.cxi"),
    Parameter("frames_per_file", int, default=1000, minimum=1,
              description="frames in a file before the next one is started"),
    Parameter("max_seconds_per_file", float, default=600.0, minimum=1.0,
              description="a file open this long is completed at the rank's next event, s"),
    Parameter("data_type", str, default="int32", choices=("int32", "float32"),
              description="saved frames: int32 rounded photons or float32 photons"),
    Parameter("compression", str, default="bitshuffle-lz4",
              choices=("bitshuffle-lz4", "gzip", "none"),
              description="HDF5 compression of the frames and peak lists"),
    Parameter("flush_interval", float, default=1.0, minimum=0.01,
              description="most time between two flushes of an open file (what a killed "
              "rank can lose), s"),
    Parameter("min_free_disk_space_gb", float, default=1.0, minimum=0.0,
              description="stop saving when the output folder's disk has less free space, GB"),
))
"""The configuration keys (documented in docs/configuration.md)."""


@dataclasses.dataclass(frozen=True)
class HitSavingSettings:
    """The ``hit_saving`` group, checked.

    Attributes: as the keys of :data:`HIT_SAVING_GROUP`; ``output_directory`` resolved (None
    when ``frames`` is ``none``).
    """

    frames: str
    non_hit_interval: int
    output_directory: str | None
    file_prefix: str
    frames_per_file: int
    max_seconds_per_file: float
    data_type: str
    compression: str
    flush_interval: float
    min_free_disk_space_gb: float

    @classmethod
    def from_parameters(cls, parameters: MonitorParameters) -> "HitSavingSettings":
        """Reads the group and checks the output folder (created if needed).

        Raises:
            OmConfigurationError: naming the file and key: no output folder while frames are
                saved, a folder that cannot be created or written, too little free space, a
                file prefix with a path separator.
        """
        values = {p.name: parameters.get(GROUP, p.name) for p in HIT_SAVING_GROUP.parameters}
        where = f"{parameters.filename}: {GROUP}"
        if "/" in values["file_prefix"] or not values["file_prefix"]:
            raise OmConfigurationError(f"{where}/file_prefix: must be a non-empty file name "
                                       f"start without '/', got {values['file_prefix']!r}")
        if values["frames"] == "none":
            return cls(**{**values, "output_directory": None})
        if values["output_directory"] is None:
            raise OmConfigurationError(f"{where}/output_directory: required when "
                                       f"{GROUP}/frames is {values['frames']!r}")
        folder = parameters.resolve_path(values["output_directory"])
        settings = cls(**{**values, "output_directory": folder})
        problem = settings.folder_problem()
        if problem:
            raise OmConfigurationError(f"{where}/output_directory: {problem}")
        return settings

    def free_gb(self) -> float:
        """Free space on the output folder's disk, GB."""
        return shutil.disk_usage(self.output_directory).free / _GB

    def folder_problem(self) -> str | None:
        """Why the output folder cannot take files now (None: it can): it cannot be created or
        written, or its disk's free space is below the floor."""
        folder = self.output_directory
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".om-write-test-{os.getpid()}")
            with open(probe, "wb") as stream:
                stream.write(b"om")
            os.unlink(probe)
            free = self.free_gb()
        except OSError as error:
            return f"{folder}: cannot write there ({error.strerror or error})"
        if free < self.min_free_disk_space_gb:
            return (f"{folder}: {free:.3f} GB free, below {GROUP}/min_free_disk_space_gb "
                    f"({self.min_free_disk_space_gb} GB)")
        return None


class HitSaver:
    """A processing rank's saving: which frames, into which file, and its counters.

    Args:
        settings: the checked configuration (``frames`` not ``none``).
        rank: this processing rank (in the file names).
        frame_shape: (ss, fs) of the frames.
        max_num_peaks: width of the peak datasets (peakfinder8's ``max_num_peaks``).
        attributes: stored on each file's root group (the monitor's version, configuration).
    """

    def __init__(self, settings: HitSavingSettings, *, rank: int, frame_shape: tuple[int, int],
                 max_num_peaks: int, attributes: dict[str, Any]) -> None:
        self._settings = settings
        self._rank = rank
        self._frame_shape = frame_shape
        self._max_num_peaks = max_num_peaks
        self._attributes = attributes
        self._start = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._sequence = 0
        self._non_hits = 0
        self._file: CxiFile | None = None
        self._opened = 0.0
        self._last_flush = 0.0
        self._error: str | None = None
        self._completed: list[list[Any]] = []  # [name, frames] not yet reported
        self.frames_saved = 0  # in completed files and the open one
        self.files_written = 0
        self.bytes_written = 0  # of completed files
        self.frames_not_saved = 0  # chosen, but saving had stopped (or their file was lost)
        # Four uncompressed frames with their peaks, per rank that may share the disk, and 1 MB.
        frame_bytes = (int(np.prod(frame_shape)) + 6 * max_num_peaks) * 4
        self._room_needed = 4 * frame_bytes * 2 + 1_000_000
        to_int32_photons(np.zeros(frame_shape, np.float32))  # numba compiles now, not mid-run
        self._lock = threading.Lock()  # the flushing thread and the event loop
        self._stopping = threading.Event()
        self._flusher = threading.Thread(target=self._flush_when_idle, daemon=True,
                                         name="om-hit-saving-flush")
        self._flusher.start()

    def wants(self, is_hit: bool) -> bool:
        """Whether a frame (a hit or not) is to be saved."""
        if self._settings.frames == "all" or is_hit:
            return True
        self._non_hits += 1
        interval = self._settings.non_hit_interval
        return interval > 0 and self._non_hits % interval == 0

    def save(self, frame: np.ndarray, peaks: Any, record: FrameRecord) -> None:
        """Appends a frame (float32 (ss, fs), photons) and its peaks to the open file (opened
        first if needed); completes the file when full or old. Never raises: a failure stops
        saving (see the module doc)."""
        with self._lock:
            if self._error is not None:
                self.frames_not_saved += 1
                return
            appended = False
            try:
                if self._disk_nearly_full():
                    return
                if self._file is None:
                    self._open()
                self._file.append(frame, peaks, record)
                appended = True
                self.frames_saved += 1
                now = time.monotonic()
                if (self._file.num_frames >= self._settings.frames_per_file
                        or now - self._opened >= self._settings.max_seconds_per_file):
                    self._complete()
                elif now - self._last_flush >= self._settings.flush_interval:
                    self._flush(now)
            except (OSError, RuntimeError, ValueError) as error:
                self.frames_not_saved += 0 if appended else 1
                self._fail(f"cannot write {self._file.path if self._file else 'a file'}: "
                           f"{_first_line(error)}")

    def _disk_nearly_full(self) -> bool:
        """Stops saving, completing the open file, when the disk's free space is below the
        floor plus room for a few frames (HDF5 must never meet a full disk: a failed write
        leaves a file it cannot complete, see CxiFile.abandon)."""
        needed = self._settings.min_free_disk_space_gb * _GB + self._room_needed
        free = shutil.disk_usage(self._settings.output_directory).free
        if free >= needed:
            return False
        if self._file is not None:
            self._complete()
        self.frames_not_saved += 1
        self._fail(f"{self._settings.output_directory}: {free / _GB:.3f} GB free, below "
                   f"{GROUP}/min_free_disk_space_gb ({self._settings.min_free_disk_space_gb} "
                   "GB) plus room for 4 more frames of every rank")
        return True

    def _open(self) -> None:
        problem = self._settings.folder_problem()
        if problem:
            raise OSError(problem)
        while True:
            self._sequence += 1
            name = (f"{self._settings.file_prefix}-{self._start}-r{self._rank:02d}-"
                    f"{self._sequence:04d}.cxi")
            path = os.path.join(self._settings.output_directory, name)
            if not (os.path.exists(path) or os.path.exists(path + ".part")):
                break
        self._file = CxiFile(path + ".part", frame_shape=self._frame_shape,
                             data_type=self._settings.data_type,
                             compression=self._settings.compression,
                             max_num_peaks=self._max_num_peaks, attributes=self._attributes)
        self._opened = self._last_flush = time.monotonic()

    def _flush(self, now: float) -> None:
        self._file.flush()
        self._last_flush = now

    def _complete(self) -> None:
        """Closes the open file and renames it to its final name (never over another file)."""
        cxi, self._file = self._file, None
        try:
            size = cxi.close()
            final = cxi.path[: -len(".part")]
            try:
                os.link(cxi.path, final)  # fails if final exists: never overwritten
                os.unlink(cxi.path)
            except FileExistsError:
                raise OSError(f"{final} appeared meanwhile; the frames stay in {cxi.path}")
            except OSError:  # a file system without hard links
                if os.path.exists(final):
                    raise
                os.rename(cxi.path, final)
        except (OSError, RuntimeError) as error:
            self._lose(cxi, f"cannot complete {cxi.path}: {_first_line(error)}")
            return
        self.files_written += 1
        self.bytes_written += size
        self._completed.append([os.path.basename(final), cxi.num_frames])

    def _lose(self, cxi: CxiFile, reason: str) -> None:
        cxi.abandon()
        self.frames_saved -= cxi.num_frames
        self.frames_not_saved += cxi.num_frames
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        if self._file is not None:
            cxi, self._file = self._file, None
            self.frames_saved -= cxi.num_frames
            self.frames_not_saved += cxi.num_frames
            cxi.abandon()
            reason += f" ({cxi.num_frames} frames left in {cxi.path}, not listed)"
        if self._error is None:
            self._error = f"rank {self._rank}: saving stopped: {reason}"
            problems.report("hit_saving_stopped", self._error)

    def _flush_when_idle(self) -> None:
        """Flushes an open file that got no frame for ``flush_interval`` (a rank waiting for
        events keeps nothing unflushed for longer)."""
        interval = self._settings.flush_interval
        while not self._stopping.wait(interval / 2):
            with self._lock:
                now = time.monotonic()
                if self._file is not None and now - self._last_flush >= interval:
                    try:
                        self._flush(now)
                    except (OSError, RuntimeError, ValueError) as error:
                        self._fail(f"cannot flush {self._file.path}: {_first_line(error)}")

    def status(self) -> dict[str, Any]:
        """The counters, the files completed since the last call (``completed``: [name,
        frames] pairs) and the error that stopped saving (or None), for the collecting rank."""
        with self._lock:
            completed, self._completed = self._completed, []
            written = self.bytes_written
            if self._file is not None:  # its size on disk so far: the rate shows while it grows
                try:
                    written += os.path.getsize(self._file.path)
                except OSError:
                    pass
            return {"frames_saved": self.frames_saved, "files_written": self.files_written,
                    "bytes_written": written,
                    "frames_not_saved": self.frames_not_saved, "error": self._error,
                    "completed": completed}

    def close(self) -> dict[str, Any]:
        """Completes the open file (at the end of the run); returns :meth:`status`."""
        self._stopping.set()
        self._flusher.join(5.0)
        with self._lock:
            if self._file is not None:
                self._complete()
        return self.status()


def _first_line(error: Exception) -> str:
    # HDF5's messages run over several lines; the log and the GUI show one.
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def file_attributes(parameters: MonitorParameters, rank: int) -> dict[str, Any]:
    """Root attributes of the saved files: om's version, the configuration (the YAML text),
    its file name and the processing rank."""
    try:
        with open(parameters.filename, encoding="utf-8") as stream:
            configuration = stream.read()
    except OSError as error:
        configuration = f"(cannot read {parameters.filename}: {error})"
    return {"om_version": om.__version__, "om_configuration": configuration,
            "om_configuration_file": os.path.abspath(parameters.filename),
            "om_processing_rank": rank}


class HitsList:
    """The collecting rank's side: ``hits.lst``, ``hits.geom`` and the totals.

    Args:
        settings: the checked configuration (``frames`` not ``none``).
        geometry_file: the monitor's CrystFEL geometry file (its panels go to ``hits.geom``).

    Raises:
        OSError: when ``hits.lst`` or ``hits.geom`` cannot be written.
    """

    def __init__(self, settings: HitSavingSettings, geometry_file: str) -> None:
        self.directory = settings.output_directory
        self.path = os.path.join(self.directory, HITS_LIST)
        self._per_rank: dict[int, dict[str, Any]] = {}
        self._rate = EventRateMeter(window=5.0)
        self.lines = 0
        with open(self.path, "a", encoding="utf-8"):
            pass  # appended to, never truncated: a restart adds to the earlier lines
        self.geometry_path = self._write_geometry(geometry_file)

    def _write_geometry(self, geometry_file: str) -> str:
        """Writes ``hits.geom``; if one with other content exists (an earlier run with another
        geometry), ``hits-START.geom`` beside it."""
        with open(geometry_file, encoding="utf-8") as stream:
            text = cxi_geometry_text(stream.read(), os.path.abspath(geometry_file))
        path = os.path.join(self.directory, GEOMETRY)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as stream:
                if stream.read() == text:
                    return path
            path = os.path.join(self.directory,
                                time.strftime("hits-%Y%m%dT%H%M%S.geom", time.gmtime()))
        with open(path, "x", encoding="utf-8") as stream:
            stream.write(text)
        return path

    def update(self, rank: int, status: dict[str, Any]) -> None:
        """Takes a processing rank's :meth:`HitSaver.status`: lists its completed files."""
        completed = status.get("completed") or []
        if completed:
            lines = [f"{name} //{index}\n" for name, frames in completed
                     for index in range(int(frames))]
            try:
                with open(self.path, "a", encoding="utf-8") as stream:
                    stream.writelines(lines)
                self.lines += len(lines)
            except OSError as error:
                problems.report("hit_saving_stopped", f"cannot append to {self.path}: {error}; "
                                f"not listed: {completed}")
        previous = self._per_rank.get(rank, {}).get("bytes_written", 0)
        self._per_rank[rank] = {key: value for key, value in status.items()
                                if key != "completed"}
        if status.get("bytes_written", 0) > previous:
            self._rate.add(int(status["bytes_written"]) - previous)

    def status(self) -> dict[str, Any]:
        """Totals over the processing ranks (the ``hit_saving`` map of ``omdata``)."""
        ranks = self._per_rank.values()
        return {
            "frames_saved": sum(int(r.get("frames_saved", 0)) for r in ranks),
            "files_written": sum(int(r.get("files_written", 0)) for r in ranks),
            "bytes_written": sum(int(r.get("bytes_written", 0)) for r in ranks),
            "bytes_per_second": self._rate.rate(),
            "frames_not_saved": sum(int(r.get("frames_not_saved", 0)) for r in ranks),
            "frames_listed": self.lines,
            "errors": [str(r["error"]) for r in ranks if r.get("error")],
            "directory": self.directory,
        }

    def summary(self) -> str:
        """One line for the final summary."""
        status = self.status()
        line = (f"hit saving: {status['frames_saved']} frames saved in "
                f"{status['files_written']} files ({status['bytes_written'] / 1e6:.1f} MB), "
                f"{self.lines} listed in {self.path}, geometry {self.geometry_path}")
        if status["frames_not_saved"] or status["errors"]:
            line += (f"; {status['frames_not_saved']} frames not saved: "
                     + "; ".join(status["errors"]))
        return line
