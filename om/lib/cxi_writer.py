# SPDX-License-Identifier: GPL-3.0-or-later
"""One CXI file of saved frames and their peak lists, in the layout CrystFEL reads.

The layout is Cheetah's (CXI, https://www.cxidb.org/cxi.html, with Cheetah's peak lists), as
CrystFEL's ``indexamajig --peaks=cxi`` reads it (libcrystfel ``image-hdf5.c``,
``image_hdf5_read_peaks_cxi``): ``nPeaks`` (N,) read as integers, ``peakXPosRaw`` /
``peakYPosRaw`` / ``peakTotalIntensity`` (N, max_num_peaks) read row ``//i`` as floats, the
first ``nPeaks[i]`` entries used. Positions are slab coordinates in om's pixel index convention
(pixel ``i`` centred on ``i``, :mod:`om.lib.geometry`); indexamajig adds the half pixel itself
(do not pass ``--no-half-pixel-shift``). Every dataset, its shape, dtype and unit is listed in
``docs/hit_saving.md``.

Crash safety: the file is written in HDF5's SWMR mode (single writer, multiple readers; HDF5 >=
1.10, ``libver="latest"``): every dataset is created first, then frames are appended and
:meth:`CxiFile.flush` makes everything appended so far readable. A writer killed with SIGKILL
leaves a file that opens with ``h5py.File(path, "r", swmr=True)`` (or, after ``h5clear -s
PATH``, as any HDF5 file) and holds the frames of its last flush: the first ``len(nPeaks)``
frames are complete (the peak lists and per-frame values are written at each flush, so
``/entry_1/data_1/data`` may hold a few frames more).
"""

import dataclasses
import os
from typing import Any

import h5py
import hdf5plugin
import numba
import numpy as np

__all__ = ["BAD_PIXEL_INT32", "CxiFile", "FrameRecord", "PEAK_DATASETS", "to_int32_photons"]

BAD_PIXEL_INT32 = np.iinfo(np.int32).min
"""The value of a bad (NaN) pixel in int32 frames."""

PEAK_DATASETS = {
    # name in /entry_1/result_1: (PeakList field, unit)
    "peakXPosRaw": ("fs", "pixels"),
    "peakYPosRaw": ("ss", "pixels"),
    "peakTotalIntensity": ("intensity", "photons"),
    "peakNPixels": ("num_pixels", "pixels"),
    "peakMaximumValue": ("max_pixel_intensity", "photons"),
    "peakSNR": ("snr", ""),
}
"""The peak datasets (N, max_num_peaks) float32, the peak list field each holds and its unit."""

_PER_FRAME = {
    # path: (dtype, unit, FrameRecord attribute)
    "/entry_1/event_id": (h5py.string_dtype("utf-8", 256), "", "event_id"),
    "/entry_1/timestamp": (np.float64, "s since the epoch", "timestamp"),
    "/entry_1/frame_is_hit": (np.uint8, "", "frame_is_hit"),
    "/entry_1/instrument_1/source_1/photon_energy_eV": (np.float64, "eV", "photon_energy_ev"),
    "/entry_1/instrument_1/detector_1/detector_distance_mm": (np.float64, "mm",
                                                             "detector_distance_mm"),
}
_PEAK_CHUNK_BYTES = 512 * 1024  # rows of peaks per chunk: fewer filter calls, within h5py's cache
_DATA = "/entry_1/data_1/data"
_RESULT = "/entry_1/result_1"


@dataclasses.dataclass
class FrameRecord:
    """What is saved with one frame.

    Attributes:
        event_id: the event's identifier (truncated to 256 bytes of UTF-8).
        timestamp: s since the epoch.
        frame_is_hit: whether the monitor found a hit.
        photon_energy_ev: eV.
        detector_distance_mm: mm.
    """

    event_id: str
    timestamp: float
    frame_is_hit: bool
    photon_energy_ev: float
    detector_distance_mm: float


@numba.njit(cache=True)
def _round_to_int32(frame, out):  # pragma: no cover - compiled
    low, high = -2147483647.0, 2147483647.0
    flat_in, flat_out = frame.ravel(), out.ravel()
    for i in range(flat_in.size):
        value = flat_in[i]
        if value != value:
            flat_out[i] = -2147483648
        else:
            flat_out[i] = np.int32(min(max(np.rint(value), low), high))


def to_int32_photons(frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rounds a float32 (ss, fs) frame in photons to the nearest integer (half to even, as
    ``numpy.rint``), clipped to the int32 range; NaN becomes :data:`BAD_PIXEL_INT32`.
    One pass (numba); returns ``out`` (int32, the frame's shape), allocated when None."""
    frame = np.ascontiguousarray(frame)
    if out is None:
        out = np.empty(frame.shape, dtype=np.int32)
    _round_to_int32(frame, out)
    return out


def compression_options(compression: str) -> dict[str, Any]:
    """h5py ``create_dataset`` options for ``bitshuffle-lz4`` (hdf5plugin's filter 32008,
    which any HDF5 reader with the plugin decodes), ``gzip`` (level 1, with shuffle) or
    ``none``.

    Raises:
        ValueError: for another name.
    """
    if compression == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if compression == "none":
        return {}
    raise ValueError(f"unknown compression {compression!r}")


class CxiFile:
    """A CXI file being written, frame by frame, in SWMR mode.

    Args:
        path: the file to create; it must not exist (never overwritten).
        frame_shape: (ss, fs) of every frame.
        data_type: ``float32`` (photons, NaN for bad pixels) or ``int32`` (rounded photons,
            :data:`BAD_PIXEL_INT32` for bad pixels).
        compression: see :func:`compression_options`.
        max_num_peaks: width of the peak datasets.
        attributes: stored on the root group (str, int, float values).

    Raises:
        OSError: when the file cannot be created (exists, unwritable, disk full).
    """

    def __init__(self, path: str, *, frame_shape: tuple[int, int], data_type: str,
                 compression: str, max_num_peaks: int, attributes: dict[str, Any]) -> None:
        self.path = path
        self.num_frames = 0
        self._dtype = np.dtype(data_type)
        self._int_buffer = (np.empty(frame_shape, np.int32) if self._dtype == np.int32
                            else None)
        self._max_num_peaks = max_num_peaks
        self._pending_peaks: list[tuple[int, dict[str, np.ndarray]]] = []
        self._pending_records: list[FrameRecord] = []
        # "w-": fails if the file exists; libver latest: SWMR needs the 1.10 file format.
        self._file = h5py.File(path, "w-", libver="latest")
        try:
            self._create(frame_shape, compression, attributes)
            self._file.swmr_mode = True
        except BaseException:
            self._file.close()
            os.unlink(path)  # created here and empty: nothing of value is removed
            raise

    def _create(self, frame_shape: tuple[int, int], compression: str,
                attributes: dict[str, Any]) -> None:
        handle = self._file
        handle.attrs.update(attributes)
        handle["cxi_version"] = 150
        options = compression_options(compression)
        data = handle.create_dataset(_DATA, shape=(0, *frame_shape),
                                     maxshape=(None, *frame_shape), chunks=(1, *frame_shape),
                                     dtype=self._dtype, **options)
        data.attrs["units"] = "photons"
        data.attrs["bad_pixel_value"] = (BAD_PIXEL_INT32 if self._dtype == np.int32
                                         else np.float32(np.nan))
        self._data = data
        result = handle.require_group(_RESULT)
        self._n_peaks = result.create_dataset("nPeaks", shape=(0,), maxshape=(None,),
                                              chunks=(1024,), dtype=np.int32)
        self._peaks = {}
        for name, (_, unit) in PEAK_DATASETS.items():
            dataset = result.create_dataset(
                name, shape=(0, self._max_num_peaks), maxshape=(None, self._max_num_peaks),
                chunks=(min(64, _PEAK_CHUNK_BYTES // (4 * self._max_num_peaks)) or 1,
                        self._max_num_peaks), dtype=np.float32, **options)
            dataset.attrs["units"] = unit
            self._peaks[name] = dataset
        self._per_frame = {}
        for path, (dtype, unit, attribute) in _PER_FRAME.items():
            dataset = handle.create_dataset(path, shape=(0,), maxshape=(None,), chunks=(64,),
                                            dtype=dtype)
            dataset.attrs["units"] = unit
            self._per_frame[attribute] = dataset

    def append(self, frame: np.ndarray, peaks: Any, record: FrameRecord) -> None:
        """Appends one frame (float32 (ss, fs), photons), its peaks (a
        :class:`~om.processing_layer.peakfinder8.PeakList` or any object with its fields as
        arrays; the first ``max_num_peaks`` kept) and its record.

        Raises:
            OSError, RuntimeError: when HDF5 cannot write (e.g. disk full).
        """
        index = self.num_frames
        if self._int_buffer is not None:
            frame = to_int32_photons(frame, self._int_buffer)
        self._data.resize(index + 1, axis=0)
        self._data[index] = frame
        # The small per-frame values wait for the next flush: two dozen h5py calls per frame
        # cost more than the frame's own write.
        count = min(len(peaks.fs), self._max_num_peaks)
        self._pending_peaks.append((count, {field: np.asarray(getattr(peaks, field)[:count],
                                                              dtype=np.float32)
                                            for field, _ in PEAK_DATASETS.values()}))
        self._pending_records.append(record)
        self.num_frames = index + 1

    def _write_pending(self) -> None:
        """Writes the peak lists and records of the frames appended since the last flush."""
        pending = len(self._pending_records)
        if not pending:
            return
        start = self._n_peaks.shape[0]
        end = start + pending
        counts = np.array([count for count, _ in self._pending_peaks], dtype=np.int32)
        self._n_peaks.resize(end, axis=0)
        self._n_peaks[start:end] = counts
        for name, (field, _) in PEAK_DATASETS.items():
            block = np.zeros((pending, self._max_num_peaks), dtype=np.float32)
            for row, (count, values) in enumerate(self._pending_peaks):
                block[row, :count] = values[field]
            self._peaks[name].resize(end, axis=0)
            self._peaks[name][start:end] = block
        for attribute, dataset in self._per_frame.items():
            values = [getattr(record, attribute) for record in self._pending_records]
            if attribute == "event_id":
                values = [str(value).encode("utf-8")[:256] for value in values]
            dataset.resize(end, axis=0)
            dataset[start:end] = np.array(values, dtype=dataset.dtype)
        self._pending_peaks, self._pending_records = [], []

    def flush(self) -> None:
        """Makes every frame appended so far readable (also after a SIGKILL of the writer).

        Raises:
            OSError, RuntimeError: when HDF5 cannot write.
        """
        self._write_pending()
        self._file.flush()

    def close(self) -> int:
        """Closes the file; returns its size in bytes.

        Raises:
            OSError, RuntimeError: when HDF5 cannot write the last data.
        """
        self._write_pending()
        self._file.close()
        return os.path.getsize(self.path)

    def abandon(self) -> None:
        """Gives the file up after a failed write, without closing it: HDF5 can crash the
        process when it closes a file whose write failed (seen with ENOSPC in SWMR mode). The
        file keeps what its last flush wrote; its handle stays open until the process ends."""
        _ABANDONED.append(self._file)


_ABANDONED: list[h5py.File] = []  # never closed, never collected (see CxiFile.abandon)
