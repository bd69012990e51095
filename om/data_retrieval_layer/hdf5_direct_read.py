# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading uncompressed HDF5 images straight from the file, without holding the GIL.

h5py holds Python's global interpreter lock (GIL) while HDF5 reads, so a thread that reads the
next images ahead (:mod:`om.lib.read_ahead`) would stall the processing rank's kernels, which
need the GIL between their numba calls. For an image stored *uncompressed*, in a contiguous
data set or in a chunk of its own, HDF5 tells where its bytes lie in the file
(``H5Dget_offset``, ``H5Dget_chunk_info_by_coord``, through h5py): ``os.preadv`` then copies
them into a numpy array and releases the GIL while it does. h5py still parses the file; only the
copy of the bytes bypasses it.

Or (:meth:`DirectLayout.map`, the files source's ``files_memory_map``), the image is not
copied at all: its pages of the file are mapped into memory (``mmap``) and the kernels read them
straight from the page cache. That saves the copy (~0.2 ms of a core per 2 MB image). A file cut
short while one of its mapped images is read would kill the process (SIGBUS): an image is
therefore mapped only under a read lease (:mod:`om.data_retrieval_layer.file_lease`), which
makes a process that wants to write or truncate the file wait until the mapping is gone, and
the image is used only while the lease holds (:meth:`MappedImage.usable`). Where no lease can
be had (a file of another user, on a network file system, or open for writing) the image is
copied.

Everything else goes through h5py as before (:func:`direct_layout` returns None): filtered
(compressed) data, virtual data sets, external storage, compact data sets, chunks holding more
or less than one image, and storage not allocated (h5py returns the fill value there).
"""

import dataclasses
import errno
import mmap
import os
import weakref

import h5py
import numpy as np
from numpy.typing import NDArray

from om.data_retrieval_layer.file_lease import lease_held, take_read_lease
from om.lib.exceptions import OmInvalidDataError

# madvise(2) advice (Linux >= 5.14) that maps every page of a range now, reading it in if needed,
# and fails with EFAULT, instead of a later SIGBUS, where the file ends. Python 3.11's mmap
# module does not name it.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


@dataclasses.dataclass(frozen=True)
class DirectLayout:
    """Where the images of one uncompressed data set are in its file.

    Attributes:
        dtype: the stored dtype, byte order included (e.g. ``>u2``).
        frame_shape: ``(ss, fs)`` of an image, pixels.
        num_images: images in the data set (1 for a 2-D data set).
        contiguous_offset: byte offset in the file of image 0 of a contiguous data set
            (user block included), or None for a data set chunked by image.
        dataset: the chunked data set, whose chunk addresses are looked up per image (None
            when contiguous).
    """

    dtype: np.dtype
    frame_shape: tuple[int, int]
    num_images: int
    contiguous_offset: int | None
    dataset: h5py.Dataset | None

    @property
    def image_nbytes(self) -> int:
        """Bytes of one stored image."""
        return self.dtype.itemsize * self.frame_shape[0] * self.frame_shape[1]

    def image_offset(self, index: int) -> int | None:
        """The byte offset of image ``index`` in the file, or None when its chunk is not
        allocated (h5py then returns the fill value).

        Raises:
            OmInvalidDataError: when ``index`` is outside the data set.
        """
        if not 0 <= index < self.num_images:
            raise OmInvalidDataError(f"image {index} is outside the data set's "
                                     f"{self.num_images} images")
        if self.contiguous_offset is not None:
            return self.contiguous_offset + index * self.image_nbytes
        info = self.dataset.id.get_chunk_info_by_coord((index, 0, 0))
        if info.byte_offset is None or info.size != self.image_nbytes or info.filter_mask:
            return None
        return int(info.byte_offset)

    def read(self, fd: int, offset: int) -> NDArray:
        """Reads the image at byte ``offset`` of the open file ``fd`` (GIL released).

        Returns:
            A new array of ``frame_shape`` and ``dtype``.

        Raises:
            OmInvalidDataError: when the file ends before the image does (truncated file) or
                cannot be read.
        """
        image = np.empty(self.frame_shape, dtype=self.dtype)
        try:
            count = os.preadv(fd, [image], offset)
        except OSError as error:
            raise OmInvalidDataError(f"cannot be read at byte {offset}: {error.strerror}")
        if count != image.nbytes:
            raise OmInvalidDataError(f"the file ends {count} bytes into the image's {image.nbytes} "
                                     f"(byte {offset}): truncated")
        return image

    def map(self, fd: int, offset: int) -> "MappedImage":
        """Maps the image at byte ``offset`` of the open file ``fd`` into memory, without a
        copy, under a read lease on the file (module documentation).

        The pages are mapped at once (``MADV_POPULATE_READ``), so that their page faults are
        taken here, in the reading thread, and not by the kernels that read the image.

        Returns:
            The mapped image; its array (:meth:`MappedImage.usable`) is read-only, its memory
            the file's page cache, and the mapping and the lease go with the last array that
            uses it.

        Raises:
            LeaseRefusedError: when no read lease can be had on the file (the image is then to
                be copied with :meth:`read`).
            OmInvalidDataError: when the file ends before the image does (truncated file) or
                cannot be mapped.
        """
        leased = take_read_lease(fd)
        try:
            array = self._map_leased(leased, offset)
        except BaseException:
            os.close(leased)
            raise
        return MappedImage(array, leased, self, offset)

    def _map_leased(self, fd: int, offset: int) -> NDArray:
        nbytes = self.image_nbytes
        try:
            size = os.fstat(fd).st_size
        except OSError as error:
            raise OmInvalidDataError(f"cannot be mapped at byte {offset}: {error.strerror}")
        if offset + nbytes > size:
            raise OmInvalidDataError(f"the file ends {max(size - offset, 0)} bytes into the "
                                     f"image's {nbytes} (byte {offset}): truncated")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            # The mapping keeps a duplicate of fd, and with it the lease, while it lives.
            mapping = mmap.mmap(fd, offset + nbytes - start, access=mmap.ACCESS_READ,
                                offset=start)
        except (OSError, ValueError) as error:
            raise OmInvalidDataError(f"cannot be mapped at byte {offset}: {error}")
        try:
            mapping.madvise(_MADV_POPULATE_READ)
        except OSError as error:
            if error.errno == errno.EFAULT:  # cut short since the fstat above
                mapping.close()
                raise OmInvalidDataError(f"the file ends within the image's {nbytes} bytes "
                                         f"(byte {offset}): truncated")
            # EINVAL: a kernel older than 5.14; the kernels take the page faults instead.
        image = np.frombuffer(mapping, dtype=self.dtype, count=nbytes // self.dtype.itemsize,
                              offset=offset - start)
        return image.reshape(self.frame_shape)


class MappedImage:
    """An image mapped from its file's pages under a read lease (:meth:`DirectLayout.map`).

    Args:
        array: the mapped image, read-only, ``frame_shape`` of the stored dtype.
        leased_fd: the descriptor holding the lease (closed with this object; the mapping
            holds the lease with its own duplicate).
        layout: the image's data set layout.
        offset: the image's byte offset in the file.
    """

    def __init__(self, array: NDArray, leased_fd: int, layout: DirectLayout,
                 offset: int) -> None:
        self._array = array
        self._fd = leased_fd
        self._layout = layout
        self._offset = offset
        weakref.finalize(self, os.close, leased_fd)

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's shape, ``(ss, fs)``."""
        return self._array.shape

    def usable(self) -> NDArray:
        """The image, to be used at once (within the lease-break time, 45 s by default).

        Returns:
            The mapped array while the lease holds. Once a process has asked to write or
            truncate the file, a copy read from the file now (that process still waits for
            the mapping to go, so the copy is the image that was mapped); the mapping goes
            with this object.

        Raises:
            OmInvalidDataError: when the file was cut short meanwhile.
        """
        if lease_held(self._fd):
            return self._array
        return self._layout.read(self._fd, self._offset)


def usable_image(image: "NDArray | MappedImage") -> NDArray:
    """``image`` itself, or :meth:`MappedImage.usable` of a mapped image.

    Raises:
        OmInvalidDataError: when a mapped image's file was cut short.
    """
    return image.usable() if isinstance(image, MappedImage) else image


def direct_layout(dataset: h5py.Dataset) -> DirectLayout | None:
    """The layout of ``dataset`` when its images can be read with :meth:`DirectLayout.read`,
    None when they must be read through h5py (module documentation).

    Args:
        dataset: a 2-D (one image) or 3-D ``(n, ss, fs)`` data set of integers or floats.
    """
    if dataset.ndim not in (2, 3) or dataset.dtype.kind not in "iuf":
        return None
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED) or dataset.external:
        return None
    if plist.get_nfilters():
        return None
    frame_shape = tuple(int(n) for n in dataset.shape[-2:])
    num_images = int(dataset.shape[0]) if dataset.ndim == 3 else 1
    if layout == h5py.h5d.CONTIGUOUS:
        # Unallocated storage still has an "offset" (HDF5's undefined address): check the size.
        offset = dataset.id.get_offset()
        if offset is None or dataset.id.get_storage_size() < dataset.size * dataset.dtype.itemsize:
            return None
        return DirectLayout(dataset.dtype, frame_shape, num_images, int(offset), None)
    if dataset.ndim == 3 and tuple(dataset.chunks) == (1, *frame_shape):
        return DirectLayout(dataset.dtype, frame_shape, num_images, None, dataset)
    return None
