# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading uncompressed HDF5 images straight from the file, without holding the GIL.

h5py holds Python's global interpreter lock (GIL) while HDF5 reads, so a thread that reads the
next images ahead (:mod:`om.lib.read_ahead`) would stall the processing rank's kernels, which
need the GIL between their numba calls. For an image stored *uncompressed*, in a contiguous
data set or in a chunk of its own, HDF5 tells where its bytes lie in the file
(``H5Dget_offset``, ``H5Dget_chunk_info_by_coord``, through h5py): ``os.preadv`` then copies
them into a numpy array and releases the GIL while it does. h5py still parses the file; only the
copy of the bytes bypasses it.

Everything else goes through h5py as before (:func:`direct_layout` returns None): filtered
(compressed) data, virtual data sets, external storage, compact data sets, chunks holding more
or less than one image, and storage not allocated (h5py returns the fill value there).
"""

import dataclasses
import os

import h5py
import numpy as np
from numpy.typing import NDArray

from om.lib.exceptions import OmInvalidDataError


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

    def image_offset(self, index: int) -> int | None:
        """The byte offset of image ``index`` in the file, or None when its chunk is not
        allocated (h5py then returns the fill value).

        Raises:
            OmInvalidDataError: when ``index`` is outside the data set.
        """
        if not 0 <= index < self.num_images:
            raise OmInvalidDataError(f"image {index} is outside the data set's "
                                     f"{self.num_images} images")
        nbytes = self.dtype.itemsize * self.frame_shape[0] * self.frame_shape[1]
        if self.contiguous_offset is not None:
            return self.contiguous_offset + index * nbytes
        info = self.dataset.id.get_chunk_info_by_coord((index, 0, 0))
        if info.byte_offset is None or info.size != nbytes or info.filter_mask:
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
