# SPDX-License-Identifier: GPL-3.0-or-later
"""Finding and reading the images of HDF5 files: NXmx master files, data files, plain HDF5.

Layouts recognised (in this order, unless a dataset path is configured):

1. **NXmx master file with external links** (DECTRIS Filewriter, Jungfraujoch): the group
   ``/entry/data`` holds ``data_000001``, ``data_000002``, ... each an HDF5 external link to
   ``<prefix>_data_NNNNNN.h5:/entry/data/data`` of shape (n, ss, fs). Blocks are taken in the
   order of their number; an image's index in the master is ``image_nr_low - 1`` of its data
   set plus its index there (``image_nr_low`` is the 1-based number of the data set's first
   image, written by both writers), or the running count when the attribute is absent.
   Relative link targets are resolved against the master file's folder (as HDF5 does).
2. **``/entry/data/data``**: a virtual data set (VDS) of an NXmx master file (newer
   Jungfraujoch masters, nexgen) or the images of a data file itself (the files Jungfraujoch's
   writer notifies). VDS source files that are missing are reported and the images they map to
   (along the first axis) are skipped: HDF5 would return fill values for them.
3. **``/data/data``** (CrystFEL's and Cheetah's default).
4. **``/raw``**: raw JUNGFRAU words (n, 512 * k, 1024) uint16, the layout of
   ``jungfrau_module_real.h5``.

A configured data set path replaces the search. A data set of 3 dimensions is (n, ss, fs)
images; of 2 dimensions, one image. Every image of a scan must have the shape of the first
block found (the frame shape), and an integer or floating-point dtype.

Metadata read from the file when present (NXmx names; a ``units`` attribute is honoured):
``/entry/instrument/beam/incident_wavelength`` (Å, to eV), else
``/entry/instrument/beam/incident_energy`` or
``/entry/instrument/detector/detectorSpecific/photon_energy`` (eV), else the root attribute
``photon_energy_eV``; ``/entry/instrument/detector/detector_distance`` or ``distance`` (m, to
mm); ``/entry/start_time`` (ISO 8601; UTC when it has no zone) and
``/entry/instrument/detector/frame_time`` (s): image ``i`` has timestamp ``start_time + i *
frame_time``; ``/entry/instrument/detector/pixel_mask`` or ``.../detectorSpecific/pixel_mask``
(non-zero: pixel excluded).

Nothing here raises on bad input: :func:`scan_file` lists each problem as ``(kind, one-line
message)``; :class:`ImageReader` raises :class:`OmInvalidDataError` when an image cannot be read.
"""

import collections
import dataclasses
import datetime
import glob
import logging
import os
import re
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4 and other filters of detector files)
import numpy as np
from numpy.typing import NDArray

from om.data_retrieval_layer.file_lease import LeaseRefusedError
from om.data_retrieval_layer.hdf5_direct_read import (
    DirectLayout,
    MappedImage,
    direct_layout,
)
from om.lib.exceptions import OmInvalidDataError

logger = logging.getLogger(__name__)

# Problem kinds (counted with om.lib.problems; documented in docs/broadcast.md).
MISSING_FILE = "missing_file"
NOT_HDF5_FILE = "not_hdf5_file"
MISSING_DATA_FILE = "missing_data_file"
MISSING_DATASET = "missing_dataset"
WRONG_IMAGE_SHAPE = "wrong_image_shape"
WRONG_IMAGE_DTYPE = "wrong_image_dtype"

HC_EV_ANGSTROM = 12398.419843320026
"""h * c in eV * Å: photon energy (eV) = HC_EV_ANGSTROM / wavelength (Å)."""

AUTO_DATA_PATHS: tuple[str, ...] = ("/entry/data/data", "/data/data", "/raw")
"""The single data sets searched, in order, after the ``/entry/data/data_NNNNNN`` links."""

_LINK_NAME = re.compile(r"^data_(\d+)$")
_MASK_PATHS = ("/entry/instrument/detector/pixel_mask",
               "/entry/instrument/detector/detectorSpecific/pixel_mask")
_WAVELENGTH_TO_ANGSTROM = {"angstrom": 1.0, "angstroms": 1.0, "a": 1.0, "å": 1.0, "nm": 10.0,
                           "m": 1e10}
_ENERGY_TO_EV = {"ev": 1.0, "kev": 1000.0}
_LENGTH_TO_MM = {"m": 1000.0, "mm": 1.0, "um": 1e-3, "µm": 1e-3, "micron": 1e-3,
                 "microns": 1e-3, "cm": 10.0}


@dataclasses.dataclass
class ImageBlock:
    """Consecutive images of one data set.

    Attributes:
        filename: the file listed (master, data or plain file); event ids name it.
        data_filename: the file holding the data set (the linked data file, or ``filename``).
        dataset: the data set's path in ``data_filename``.
        first: index, in ``filename``'s numbering (0-based), of the block's first image.
        count: number of images (1 for a 2-D data set).
        frame_shape: ``(ss, fs)`` of an image, pixels.
        dtype: numpy dtype string of the stored images (e.g. ``"<u2"``).
        single: whether the data set is 2-D (one image).
        excluded: ``[start, stop)`` local index ranges that cannot be read (missing VDS
            sources).
    """

    filename: str
    data_filename: str
    dataset: str
    first: int
    count: int
    frame_shape: tuple[int, int]
    dtype: str
    single: bool = False
    excluded: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def is_excluded(self, index: int) -> bool:
        """Whether local image ``index`` falls in an excluded range."""
        return any(start <= index < stop for start, stop in self.excluded)

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-encodable form (lists, str, int, bool)."""
        return {"filename": self.filename, "data_filename": self.data_filename,
                "dataset": self.dataset, "first": self.first, "count": self.count,
                "frame_shape": list(self.frame_shape), "dtype": self.dtype,
                "single": self.single, "excluded": [list(r) for r in self.excluded]}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "ImageBlock":
        """Inverse of :meth:`to_dict`."""
        return cls(filename=value["filename"], data_filename=value["data_filename"],
                   dataset=value["dataset"], first=int(value["first"]), count=int(value["count"]),
                   frame_shape=tuple(value["frame_shape"]), dtype=value["dtype"],
                   single=bool(value["single"]),
                   excluded=[(int(a), int(b)) for a, b in value["excluded"]])


@dataclasses.dataclass
class FileMetadata:
    """What a file tells about its images (None: not in the file).

    Attributes:
        beam_energy_eV: photon energy, eV.
        detector_distance_mm: detector distance, mm.
        start_time: acquisition start, s since the epoch.
        frame_time: time between images, s.
        mtime: the file's modification time, s since the epoch.
        pixel_mask: path of a 2-D pixel mask of the frame shape in the file (non-zero: bad).
    """

    beam_energy_eV: float | None = None
    detector_distance_mm: float | None = None
    start_time: float | None = None
    frame_time: float | None = None
    mtime: float = 0.0
    pixel_mask: str | None = None

    def timestamp(self, index: int) -> float:
        """Timestamp of image ``index`` (s since the epoch): ``start_time + index *
        frame_time`` (``start_time`` alone without a frame time), else the file's mtime."""
        if self.start_time is None:
            return self.mtime
        return self.start_time + index * (self.frame_time or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-encodable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "FileMetadata":
        """Inverse of :meth:`to_dict`."""
        return cls(**value)


@dataclasses.dataclass
class FileImages:
    """The images found in one file, its metadata and the problems met.

    Attributes:
        filename: the file, as listed.
        blocks: the readable image blocks, in image order.
        metadata: the file's metadata.
        problems: ``(kind, one-line message)`` for each problem (the file or a block skipped).
    """

    filename: str
    blocks: list[ImageBlock] = dataclasses.field(default_factory=list)
    metadata: FileMetadata = dataclasses.field(default_factory=FileMetadata)
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        """Number of readable images."""
        return sum(block.count - sum(b - a for a, b in block.excluded) for block in self.blocks)

    def locate(self, index: int) -> tuple[ImageBlock, int]:
        """Returns the block holding image ``index`` (file numbering) and the local index.

        Raises:
            OmInvalidDataError: when no readable image has this index.
        """
        for block in self.blocks:
            local = index - block.first
            if 0 <= local < block.count and not block.is_excluded(local):
                return block, local
        raise OmInvalidDataError(f"{self.filename}: no readable image {index}")

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-encodable form (without the problems, which are reported where found)."""
        return {"filename": self.filename, "blocks": [b.to_dict() for b in self.blocks],
                "metadata": self.metadata.to_dict()}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "FileImages":
        """Inverse of :meth:`to_dict`."""
        return cls(filename=value["filename"],
                   blocks=[ImageBlock.from_dict(b) for b in value["blocks"]],
                   metadata=FileMetadata.from_dict(value["metadata"]))


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def open_hdf5(filename: str) -> h5py.File:
    """Opens an HDF5 file read-only without file locking (files on shared file systems, or
    still open in a writer, can be read).

    Raises:
        OSError: when the file is missing or is not HDF5.
    """
    return h5py.File(filename, "r", locking=False)


def expand_patterns(patterns: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expands file paths and glob patterns, in the given order (each pattern's matches sorted).

    Returns:
        (file names, problems): a literal path that does not exist or a pattern matching no
        file is a ``missing_file`` problem.
    """
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(path for path in glob.glob(expanded) if os.path.isfile(path))
            if not matches:
                problems.append((MISSING_FILE, f"no file matches {pattern!r}"))
            files.extend(matches)
        elif os.path.isfile(expanded):
            files.append(expanded)
        else:
            problems.append((MISSING_FILE, f"no file {pattern}"))
    return files, problems


def _units(node: h5py.Dataset) -> str:
    value = node.attrs.get("units", b"")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().lower()


def _scalar(handle: h5py.File, path: str, factors: dict[str, float], default_unit: str
            ) -> float | None:
    # A positive finite number at ``path``, converted with the factor of its units attribute.
    try:
        node = handle.get(path)
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiu":
            return None
        value = float(np.asarray(node[()]).ravel()[0])
        factor = factors.get(_units(node) or default_unit)
    except (OSError, KeyError, ValueError, IndexError, TypeError):
        return None
    if factor is None or not np.isfinite(value) or value <= 0:
        return None
    return value * factor


def _string(handle: h5py.File, path: str) -> str | None:
    try:
        node = handle.get(path)
        if not isinstance(node, h5py.Dataset):
            return None
        value = np.asarray(node[()]).ravel()[0]
    except (OSError, KeyError, ValueError, IndexError, TypeError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value) if isinstance(value, str) else None


def parse_iso_time(text: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (UTC when no zone is given), or None."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def read_metadata(handle: h5py.File, filename: str) -> FileMetadata:
    """Reads a file's metadata (see the module documentation); missing items are None."""
    metadata = FileMetadata()
    try:
        metadata.mtime = os.path.getmtime(filename)
    except OSError:
        pass
    wavelength = _scalar(handle, "/entry/instrument/beam/incident_wavelength",
                         _WAVELENGTH_TO_ANGSTROM, "angstrom")
    if wavelength is not None:
        metadata.beam_energy_eV = HC_EV_ANGSTROM / wavelength
    else:
        for path in ("/entry/instrument/beam/incident_energy",
                     "/entry/instrument/detector/detectorSpecific/photon_energy"):
            metadata.beam_energy_eV = _scalar(handle, path, _ENERGY_TO_EV, "ev")
            if metadata.beam_energy_eV is not None:
                break
        else:
            try:
                energy = float(handle.attrs.get("photon_energy_eV", np.nan))
            except (TypeError, ValueError):
                energy = np.nan
            if np.isfinite(energy) and energy > 0:
                metadata.beam_energy_eV = energy
    for path in ("/entry/instrument/detector/detector_distance",
                 "/entry/instrument/detector/distance"):
        metadata.detector_distance_mm = _scalar(handle, path, _LENGTH_TO_MM, "m")
        if metadata.detector_distance_mm is not None:
            break
    metadata.start_time = parse_iso_time(_string(handle, "/entry/start_time"))
    metadata.frame_time = _scalar(handle, "/entry/instrument/detector/frame_time",
                                  {"s": 1.0, "ms": 1e-3, "us": 1e-6}, "s")
    for path in _MASK_PATHS:
        node = handle.get(path)
        if isinstance(node, h5py.Dataset) and node.ndim == 2 and node.dtype.kind in "biu":
            metadata.pixel_mask = path
            break
    return metadata


def _block_from_dataset(filename: str, data_filename: str, dataset: h5py.Dataset, path: str,
                        first: int, frame_shape: tuple[int, int] | None,
                        problems: list[tuple[str, str]]) -> ImageBlock | None:
    where = f"{data_filename}:{path}"
    if dataset.dtype.kind not in "fiu":
        problems.append((WRONG_IMAGE_DTYPE,
                         f"{where}: images must be integers or floats, not {dataset.dtype}"))
        return None
    if dataset.ndim == 3:
        count, shape, single = int(dataset.shape[0]), tuple(dataset.shape[1:]), False
    elif dataset.ndim == 2:
        count, shape, single = 1, tuple(dataset.shape), True
    else:
        problems.append((WRONG_IMAGE_SHAPE, f"{where}: shape {dataset.shape} is neither "
                         "(n, ss, fs) images nor one (ss, fs) image"))
        return None
    if 0 in shape:
        problems.append((WRONG_IMAGE_SHAPE, f"{where}: empty images, shape {dataset.shape}"))
        return None
    if frame_shape is not None and shape != tuple(frame_shape):
        problems.append((WRONG_IMAGE_SHAPE, f"{where}: images of shape {shape}, expected "
                         f"{tuple(frame_shape)} like the first images"))
        return None
    return ImageBlock(filename=filename, data_filename=data_filename, dataset=path,
                      first=first, count=count, frame_shape=shape,  # type: ignore[arg-type]
                      dtype=dataset.dtype.str, single=single)


def _resolve_target(parent: str, target: str) -> str:
    # HDF5 resolves a relative link or VDS source against the parent file's folder first.
    if os.path.isabs(target):
        return target
    beside = os.path.join(os.path.dirname(os.path.abspath(parent)), target)
    return beside if os.path.exists(beside) or not os.path.exists(target) else target


def _scan_links(filename: str, group: h5py.Group, frame_shape: tuple[int, int] | None,
                result: FileImages) -> tuple[int, int] | None:
    numbered = sorted((int(match.group(1)), name) for name in group
                      if (match := _LINK_NAME.match(name)))
    running = 0
    for _, name in numbered:
        path = f"{group.name}/{name}"
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = _resolve_target(filename, link.filename)
            if not os.path.isfile(target):
                result.problems.append((MISSING_DATA_FILE, f"{filename}:{path} links to "
                                        f"{link.filename}, which does not exist"))
                continue
            try:
                data_file = open_hdf5(target)
            except OSError as error:
                result.problems.append((NOT_HDF5_FILE, f"{target} (linked from {filename}:"
                                        f"{path}) cannot be read as HDF5: {one_line(error)}"))
                continue
            with data_file:
                dataset = data_file.get(link.path)
                if not isinstance(dataset, h5py.Dataset):
                    result.problems.append((MISSING_DATASET, f"{target}: no data set {link.path}"
                                            f" (linked from {filename}:{path})"))
                    continue
                block = _block_from_dataset(filename, target, dataset, link.path, running,
                                            frame_shape, result.problems)
                low = dataset.attrs.get("image_nr_low")
        else:
            try:
                dataset = group.get(name)
            except (KeyError, OSError) as error:
                result.problems.append((MISSING_DATASET, f"{filename}:{path}: {one_line(error)}"))
                continue
            if not isinstance(dataset, h5py.Dataset):
                result.problems.append((MISSING_DATASET, f"{filename}:{path} is not a data set"))
                continue
            block = _block_from_dataset(filename, filename, dataset, dataset.name or path,
                                        running, frame_shape, result.problems)
            low = dataset.attrs.get("image_nr_low")
        if block is None:
            continue
        try:
            if low is not None and int(np.asarray(low).ravel()[0]) >= 1:
                block.first = int(np.asarray(low).ravel()[0]) - 1
        except (TypeError, ValueError, IndexError):
            pass
        if result.blocks and block.first < result.blocks[-1].first + result.blocks[-1].count:
            block.first = result.blocks[-1].first + result.blocks[-1].count
        running = block.first + block.count
        frame_shape = block.frame_shape
        result.blocks.append(block)
    return frame_shape


def _check_virtual_sources(filename: str, dataset: h5py.Dataset, path: str,
                           block: ImageBlock, problems: list[tuple[str, str]]) -> None:
    try:
        sources = dataset.virtual_sources()
    except (OSError, RuntimeError) as error:
        problems.append((MISSING_DATA_FILE, f"{filename}:{path}: cannot list the virtual "
                         f"sources: {one_line(error)}"))
        block.excluded.append((0, block.count))
        return
    for source in sources:
        if source.file_name == ".":
            continue
        target = _resolve_target(filename, source.file_name)
        reason = None
        if not os.path.isfile(target):
            kind, reason = MISSING_DATA_FILE, "does not exist"
        else:
            try:
                with open_hdf5(target) as data_file:
                    if not isinstance(data_file.get(source.dset_name), h5py.Dataset):
                        kind, reason = MISSING_DATASET, f"has no data set {source.dset_name}"
            except OSError as error:
                kind, reason = NOT_HDF5_FILE, f"cannot be read as HDF5: {one_line(error)}"
        if reason is None:
            continue
        try:
            start, end = source.vspace.get_select_bounds()
            skipped = (int(start[0]), int(end[0]) + 1) if not block.single else (0, 1)
        except (ValueError, TypeError, RuntimeError):
            skipped = (0, block.count)
        block.excluded.append(skipped)
        problems.append((kind, f"{filename}:{path}: virtual source {source.file_name} "
                         f"{reason}; images {skipped[0]}-{skipped[1] - 1} skipped"))


def scan_file(filename: str, *, data_path: str | None = None,
              frame_shape: tuple[int, int] | None = None) -> FileImages:
    """Finds the images of one file (see the module documentation for the layouts).

    Args:
        filename: the file (master, data or plain HDF5 file).
        data_path: the data set of the images; None searches the layouts.
        frame_shape: the ``(ss, fs)`` every image must have; None: the first block's.

    Returns:
        The images, metadata and problems (``missing_file``, ``not_hdf5_file``,
        ``missing_data_file``, ``missing_dataset``, ``wrong_image_shape``,
        ``wrong_image_dtype``). Never raises on bad files.
    """
    result = FileImages(filename=filename)
    if not os.path.isfile(filename):
        result.problems.append((MISSING_FILE, f"no file {filename}"))
        return result
    try:
        handle = open_hdf5(filename)
    except OSError as error:
        result.problems.append((NOT_HDF5_FILE,
                                f"{filename} cannot be read as HDF5: {one_line(error)}"))
        return result
    with handle:
        result.metadata = read_metadata(handle, filename)
        paths = [data_path] if data_path else list(AUTO_DATA_PATHS)
        group = handle.get("/entry/data") if data_path is None else None
        if isinstance(group, h5py.Group) and any(_LINK_NAME.match(name) for name in group):
            _scan_links(filename, group, frame_shape, result)
        else:
            for path in paths:
                try:
                    dataset = handle.get(path)
                except (KeyError, OSError):  # e.g. a dangling external link
                    dataset = None
                if dataset is None:
                    continue
                if not isinstance(dataset, h5py.Dataset):
                    result.problems.append((MISSING_DATASET,
                                            f"{filename}:{path} is not a data set"))
                    break
                block = _block_from_dataset(filename, filename, dataset, path, 0, frame_shape,
                                            result.problems)
                if block is not None:
                    if dataset.is_virtual:
                        _check_virtual_sources(filename, dataset, path, block, result.problems)
                    result.blocks.append(block)
                break
            else:
                searched = ", ".join(paths if data_path else
                                     ["/entry/data/data_NNNNNN", *AUTO_DATA_PATHS])
                result.problems.append((MISSING_DATASET, f"{filename}: no images ({searched})"))
        if result.metadata.pixel_mask is not None:
            mask = handle[result.metadata.pixel_mask]
            if not result.blocks or tuple(mask.shape) != tuple(result.blocks[0].frame_shape):
                result.metadata.pixel_mask = None
    return result


def to_float32(image: NDArray[Any]) -> NDArray[np.float32]:
    """Converts a stored image to float32 with invalid pixels as NaN.

    Args:
        image: a 2-D integer or floating-point image as stored.

    Returns:
        a writeable float32 image of the same shape: unsigned integers' all-ones value (e.g.
        0xFFFF for uint16, DECTRIS's and Jungfraujoch's mark of defective or missing pixels) and
        signed integers' minimum (e.g. -32768 for int16, Jungfraujoch's fill/underload value)
        are NaN; other values converted exactly up to 2**24. Floats keep their NaN.

    Raises:
        OmInvalidDataError: for a dtype that is not an integer or float.
    """
    kind = image.dtype.kind
    if kind == "f":
        out = np.asarray(image, dtype=np.float32)
        # A memory-mapped image is read-only, and the pixel mask is applied in place.
        return out if out.flags.writeable else out.copy()
    if kind not in "iu":
        raise OmInvalidDataError(f"images must be integers or floats, not {image.dtype}")
    out = image.astype(np.float32)
    info = np.iinfo(image.dtype)
    out[image == (info.max if kind == "u" else info.min)] = np.nan
    return out


class ImageReader:
    """Reads images by block and index, keeping a few files open.

    Args:
        max_open_files: how many HDF5 files to keep open (least recently used closed first).
        memory_map: map uncompressed images into memory instead of copying them, where a
            read lease on the file can be had
            (:meth:`~om.data_retrieval_layer.hdf5_direct_read.DirectLayout.map`).
    """

    def __init__(self, max_open_files: int = 8, memory_map: bool = False) -> None:
        self._max_open_files = max_open_files
        self._memory_map = memory_map
        self._files: collections.OrderedDict[str, h5py.File] = collections.OrderedDict()
        # Looking a data set up by path costs as much as reading a 2 MB image from the page
        # cache: the open files' data sets are kept.
        self._datasets: dict[tuple[str, str], h5py.Dataset] = {}
        self._layouts: dict[tuple[str, str], DirectLayout | None] = {}
        self._masks: dict[tuple[str, str], NDArray[np.bool_] | None] = {}
        self._lease_refusals: set[str] = set()  # reasons logged

    def _open(self, filename: str) -> h5py.File:
        handle = self._files.pop(filename, None)
        if handle is None:
            try:
                handle = open_hdf5(filename)
            except OSError as error:
                raise OmInvalidDataError(f"{filename} cannot be opened: {one_line(error)}")
            while len(self._files) >= self._max_open_files:
                oldest, old_handle = self._files.popitem(last=False)
                self._forget(oldest)
                old_handle.close()
        self._files[filename] = handle
        return handle

    def read(self, block: ImageBlock, index: int) -> NDArray[Any] | MappedImage:
        """Returns local image ``index`` of ``block`` as stored: 2-D ``block.frame_shape``, of
        the stored dtype (filters such as bitshuffle/LZ4 decoded by HDF5).

        Uncompressed images are copied straight from the file, without holding the GIL, or,
        with ``memory_map`` and a read lease on the file, mapped: a
        :class:`~om.data_retrieval_layer.hdf5_direct_read.MappedImage`, whose array
        :func:`~om.data_retrieval_layer.hdf5_direct_read.usable_image` gives when it is used
        (:mod:`om.data_retrieval_layer.hdf5_direct_read`). The others are read by h5py.

        Raises:
            OmInvalidDataError: when the data set is gone or changed, or the image cannot be
                read (e.g. a corrupt chunk, a missing HDF5 filter or a truncated file), naming
                file and image.
        """
        where = f"{block.data_filename}:{block.dataset}[{index}]"
        handle = self._open(block.data_filename)
        try:
            image = self._read_image(handle, block, 0 if block.single else index)
        except (OSError, KeyError, ValueError, IndexError, TypeError,
                OmInvalidDataError) as error:
            self._files.pop(block.data_filename, None)
            self._forget(block.data_filename)
            handle.close()
            raise OmInvalidDataError(f"{where} cannot be read: {one_line(error)}")
        if image.shape != tuple(block.frame_shape):
            raise OmInvalidDataError(f"{where} has shape {image.shape}, expected "
                                     f"{tuple(block.frame_shape)}")
        return image

    def _read_image(self, handle: h5py.File, block: ImageBlock,
                    index: int) -> NDArray[Any] | MappedImage:
        key = (block.data_filename, block.dataset)
        dataset = self._datasets.get(key)
        if dataset is None:
            dataset = handle[block.dataset]
            # Direct reads need the OS file descriptor of HDF5's default (sec2) driver.
            self._layouts[key] = direct_layout(dataset) if handle.driver == "sec2" else None
            self._datasets[key] = dataset
        layout = self._layouts[key]
        if layout is not None:
            offset = layout.image_offset(index)
            if offset is not None:
                fd = handle.id.get_vfd_handle()
                if self._memory_map:
                    try:
                        return layout.map(fd, offset)
                    except LeaseRefusedError as refusal:
                        self._log_lease_refusal(block.data_filename, str(refusal))
                return layout.read(fd, offset)
        return dataset[()] if block.single else dataset[index]

    def _log_lease_refusal(self, filename: str, reason: str) -> None:
        # Once per reason: following a run of another user's files would repeat it per file.
        if reason not in self._lease_refusals:
            self._lease_refusals.add(reason)
            logger.info("images of %s (and of any file for the same reason) are copied, not "
                        "memory-mapped: %s", filename, reason)

    def _forget(self, filename: str) -> None:
        """Drops the kept data sets of ``filename`` (before it is closed)."""
        for key in [key for key in self._datasets if key[0] == filename]:
            del self._datasets[key]
            self._layouts.pop(key, None)

    def pixel_mask(self, filename: str, path: str | None) -> NDArray[np.bool_] | None:
        """Returns the bad pixels (True) of the mask at ``path`` of ``filename`` (cached), or
        None when there is no mask or it cannot be read."""
        if path is None:
            return None
        key = (filename, path)
        if key not in self._masks:
            try:
                self._masks[key] = np.asarray(self._open(filename)[path][()]) != 0
            except (OSError, KeyError, ValueError, OmInvalidDataError):
                self._masks[key] = None
        return self._masks[key]

    def close(self) -> None:
        """Closes every open file."""
        self._datasets.clear()
        while self._files:
            self._files.popitem()[1].close()
