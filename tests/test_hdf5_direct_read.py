# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading uncompressed HDF5 images straight from the file
(``om.data_retrieval_layer.hdf5_direct_read``, used by ``nxmx_files.ImageReader``): every
layout gives exactly h5py's images, the layouts that cannot be read directly fall back to h5py,
and a truncated file is an error, not a crash, whether the images are copied or memory-mapped.
Real HDF5 files in ``tmp_path``."""

import os

import h5py
import hdf5plugin
import numpy as np
import pytest

from om.data_retrieval_layer.hdf5_direct_read import direct_layout
from om.data_retrieval_layer.nxmx_files import ImageBlock, ImageReader
from om.lib.exceptions import OmInvalidDataError

SHAPE = (6, 40, 56)


def _images(dtype):
    rng = np.random.default_rng(3)
    return rng.integers(0, 30000, size=SHAPE).astype(dtype)


def _block(filename, dataset, count=SHAPE[0], single=False, dtype="<u2"):
    return ImageBlock(filename=str(filename), data_filename=str(filename), dataset=dataset,
                      first=0, count=count, frame_shape=SHAPE[1:], dtype=dtype, single=single)


# (name, h5py create_dataset keywords, read directly)
LAYOUTS = [
    ("contiguous", {}, True),
    ("chunked_by_image", {"chunks": (1, *SHAPE[1:])}, True),
    ("chunked_two_images", {"chunks": (2, *SHAPE[1:])}, False),
    ("chunked_half_images", {"chunks": (1, 20, 56)}, False),
    ("gzip", {"chunks": (1, *SHAPE[1:]), "compression": "gzip"}, False),
    ("bitshuffle_lz4", {"chunks": (1, *SHAPE[1:]), **hdf5plugin.Bitshuffle()}, False),
]


@pytest.mark.parametrize("memory_map", [False, True], ids=["copied", "mapped"])
@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4", "<f4", ">f8"])
@pytest.mark.parametrize("name, keywords, direct", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_every_layout_reads_h5pys_images(tmp_path, name, keywords, direct, dtype, memory_map):
    images = _images(dtype)
    path = tmp_path / f"{name}.h5"
    with h5py.File(path, "w", userblock_size=1024) as handle:  # offsets count the user block
        handle.create_dataset("/data/data", data=images, **keywords)
        handle["/data/single"] = images[2]
    with h5py.File(path, "r") as handle:
        assert (direct_layout(handle["/data/data"]) is not None) == direct
        assert direct_layout(handle["/data/single"]) is not None  # a 2-D contiguous image
    reader = ImageReader(memory_map=memory_map)
    for index in range(SHAPE[0]):
        image = reader.read(_block(path, "/data/data"), index)
        assert image.dtype == np.dtype(dtype) and image.shape == SHAPE[1:]
        assert np.array_equal(image, images[index])
        assert image.flags.writeable == (not memory_map or not direct)
    single = reader.read(_block(path, "/data/single", 1, True), 0)
    assert np.array_equal(single, images[2])
    assert single.flags.writeable == (not memory_map)
    reader.close()
    # Mapped images outlive their file's closing (the mapping is the array's).
    assert np.array_equal(single, images[2])


def test_storage_never_written_gives_h5pys_fill_values(tmp_path):
    path = tmp_path / "unwritten.h5"
    images = _images("<u2")
    with h5py.File(path, "w") as handle:
        handle.create_dataset("empty", shape=SHAPE, dtype="<u2", fillvalue=7)
        partly = handle.create_dataset("partly", shape=SHAPE, dtype="<u2",
                                       chunks=(1, *SHAPE[1:]), fillvalue=9)
        partly[1] = images[1]
    with h5py.File(path, "r") as handle:
        assert direct_layout(handle["empty"]) is None  # no storage allocated
        assert direct_layout(handle["partly"]) is not None
    reader = ImageReader()
    assert np.all(reader.read(_block(path, "empty"), 3) == 7)
    assert np.array_equal(reader.read(_block(path, "partly"), 1), images[1])
    assert np.all(reader.read(_block(path, "partly"), 2) == 9)  # chunk never written
    reader.close()


def test_virtual_external_and_compact_data_sets_are_read_by_h5py(tmp_path):
    images = _images("<u2")
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as handle:
        handle["data"] = images
    raw = tmp_path / "external.raw"
    images.tofile(raw)
    path = tmp_path / "other_layouts.h5"
    with h5py.File(path, "w") as handle:
        layout = h5py.VirtualLayout(shape=SHAPE, dtype="<u2")
        layout[:] = h5py.VirtualSource(str(source), "data", shape=SHAPE)
        handle.create_virtual_dataset("virtual", layout)
        handle.create_dataset("external", shape=SHAPE, dtype="<u2",
                              external=[(str(raw), 0, images.nbytes)])
        space = h5py.h5s.create_simple(SHAPE[1:])
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        h5py.h5d.create(handle.id, b"compact", h5py.h5t.STD_U16LE, space, dcpl=plist)
        handle["compact"][...] = images[4]
    reader = ImageReader()
    with h5py.File(path, "r") as handle:
        for name in ("virtual", "external", "compact"):
            assert direct_layout(handle[name]) is None, name
    for index in range(SHAPE[0]):
        assert np.array_equal(reader.read(_block(path, "virtual"), index), images[index])
        assert np.array_equal(reader.read(_block(path, "external"), index), images[index])
    assert np.array_equal(reader.read(_block(path, "compact", 1, True), 0), images[4])
    reader.close()


@pytest.mark.parametrize("memory_map", [False, True], ids=["copied", "mapped"])
@pytest.mark.parametrize("keywords", [{}, {"chunks": (1, *SHAPE[1:])}],
                         ids=["contiguous", "chunked_by_image"])
def test_a_truncated_file_is_an_error_and_the_reader_goes_on(tmp_path, keywords, memory_map):
    images = _images("<u2")
    path = tmp_path / "truncated.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("/data/data", data=images, **keywords)
        offset = (handle["/data/data"].id.get_offset() if not keywords else
                  handle["/data/data"].id.get_chunk_info_by_coord((3, 0, 0)).byte_offset)
    reader = ImageReader(memory_map=memory_map)
    block = _block(path, "/data/data")
    assert np.array_equal(reader.read(block, 0), images[0])  # opened: its layout is kept
    cut = offset + (3 * images[0].nbytes if not keywords else 0) + 100
    os.truncate(path, cut)  # the file shrinks under the monitor, into image 3
    with pytest.raises(OmInvalidDataError, match=r"truncated\.h5:/data/data\[3\].*truncated"):
        reader.read(block, 3)
    # The file was closed; reading again reopens it: HDF5 refuses the truncated file, an error
    # too, and the reader is still usable for other files.
    with pytest.raises(OmInvalidDataError, match="truncated.h5"):
        reader.read(block, 0)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as handle:
        handle["/data/data"] = images
    assert np.array_equal(reader.read(_block(good, "/data/data"), 5), images[5])
    reader.close()


def test_an_index_outside_the_data_set_is_an_error(tmp_path):
    path = tmp_path / "short.h5"
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = _images("<u2")
    reader = ImageReader()
    with pytest.raises(OmInvalidDataError, match=r"\[6\] cannot be read: image 6 is outside"):
        reader.read(_block(path, "/data/data"), 6)
    reader.close()


def _mapped_regions(path):
    with open("/proc/self/maps") as maps:
        return sum(str(path) in line for line in maps)


def test_a_memory_mapped_image_is_unmapped_with_its_last_array(tmp_path):
    """Each mapped image maps only its own pages, and gives them back when its array goes: a
    monitor going through a large run does not accumulate mappings (nor count the run's pages
    in its memory)."""
    images = _images("<u2")
    path = tmp_path / "mapped.h5"
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = images
    reader = ImageReader(memory_map=True)
    kept = [reader.read(_block(path, "/data/data"), index) for index in range(SHAPE[0])]
    assert _mapped_regions(path) == SHAPE[0]
    view = kept[3][10:20]  # a view keeps its image's mapping
    kept.clear()
    assert _mapped_regions(path) == 1
    assert np.array_equal(view, images[3][10:20])
    del view
    assert _mapped_regions(path) == 0
    reader.close()
