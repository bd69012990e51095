# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading uncompressed HDF5 images straight from the file
(``om.data_retrieval_layer.hdf5_direct_read``, used by ``nxmx_files.ImageReader``): every
layout gives exactly h5py's images, the layouts that cannot be read directly fall back to h5py,
and a truncated file is an error, not a crash, whether the images are copied or memory-mapped.
Real HDF5 files in ``tmp_path``."""

import logging
import os
import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest
from helpers import (
    mapped_regions,
    process_holding_open_for_writing,
    skip_unless_leases_are_taken,
)

from om.data_retrieval_layer.hdf5_direct_read import (
    MappedImage,
    direct_layout,
    usable_image,
)
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
        read = reader.read(_block(path, "/data/data"), index)
        assert isinstance(read, MappedImage) == (memory_map and direct)
        image = usable_image(read)
        assert image.dtype == np.dtype(dtype) and image.shape == SHAPE[1:]
        assert np.array_equal(image, images[index])
        assert image.flags.writeable == (not memory_map or not direct)
    single = usable_image(reader.read(_block(path, "/data/single", 1, True), 0))
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
    # Opened: its layout is kept. (The image's mapping, and with it the read lease that would
    # make the truncation below wait for it, goes with the array.)
    assert np.array_equal(usable_image(reader.read(block, 0)), images[0])
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
    assert np.array_equal(usable_image(reader.read(_block(good, "/data/data"), 5)), images[5])
    reader.close()


def test_an_index_outside_the_data_set_is_an_error(tmp_path):
    path = tmp_path / "short.h5"
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = _images("<u2")
    reader = ImageReader()
    with pytest.raises(OmInvalidDataError, match=r"\[6\] cannot be read: image 6 is outside"):
        reader.read(_block(path, "/data/data"), 6)
    reader.close()


def test_a_memory_mapped_image_is_unmapped_with_its_last_array(tmp_path):
    """Each mapped image maps only its own pages, and gives them back when its array goes: a
    monitor going through a large run does not accumulate mappings (nor count the run's pages
    in its memory)."""
    images = _images("<u2")
    path = tmp_path / "mapped.h5"
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = images
    reader = ImageReader(memory_map=True)
    kept = [usable_image(reader.read(_block(path, "/data/data"), index))
            for index in range(SHAPE[0])]
    assert mapped_regions(path) == SHAPE[0]
    view = kept[3][10:20]  # a view keeps its image's mapping
    kept.clear()
    assert mapped_regions(path) == 1
    assert np.array_equal(view, images[3][10:20])
    del view
    assert mapped_regions(path) == 0
    reader.close()


_HOLDER = r"""
import sys
import numpy as np
from om.data_retrieval_layer.hdf5_direct_read import MappedImage
from om.data_retrieval_layer.nxmx_files import ImageBlock, ImageReader
from om.lib.exceptions import OmInvalidDataError
import time

path, n, ss, fs = sys.argv[1], *map(int, sys.argv[2:5])
block = ImageBlock(filename=path, data_filename=path, dataset="/data/data", first=0, count=n,
                   frame_shape=(ss, fs), dtype="<u2", single=False)
reader = ImageReader(memory_map=True)
mapped = reader.read(block, 3)
print("mapped", isinstance(mapped, MappedImage), flush=True)
deadline = time.monotonic() + 20
while (image := mapped.usable()).flags.writeable is False and time.monotonic() < deadline:
    time.sleep(0.01)
print("usable", "copied" if image.flags.writeable else "still mapped", int(image.sum()), flush=True)
sys.stdin.readline()
del mapped  # the mapping and its lease go: the truncation goes on
print("released", flush=True)
sys.stdin.readline()
try:
    reader.read(block, 3)
except OmInvalidDataError as error:
    print("error", error, flush=True)
"""


def test_a_file_cut_short_under_a_mapped_image_waits_for_it_and_the_image_is_copied(tmp_path):
    """Another process truncates the file of a memory-mapped image that is not yet used: the
    truncation waits (the read lease), the image is then used as a copy of the still whole
    file, and the truncation goes on once the mapping is gone. Without the lease, the holder
    would die of SIGBUS reading the image; it runs in a process of its own so that this test
    would then fail instead of dying."""
    images = _images("<u2")
    path = tmp_path / "cut_under_mapping.h5"
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = images
        offset = handle["/data/data"].id.get_offset()
    skip_unless_leases_are_taken(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), *map(str, SHAPE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    truncater = None
    try:
        assert holder.stdout.readline() == "mapped True\n"
        cut = offset + 3 * images[0].nbytes + 100  # into image 3
        truncater = subprocess.Popen(
            [sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))",
             str(path), str(cut)])
        assert holder.stdout.readline() == f"usable copied {int(images[3].sum())}\n"
        assert truncater.poll() is None  # still waiting for the mapping to go
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert truncater.wait(timeout=20) == 0
        assert os.stat(path).st_size == cut
        holder.stdin.write("\n")
        holder.stdin.flush()
        output, _ = holder.communicate(timeout=20)
    finally:
        for process in (holder, truncater):
            if process is not None:
                process.kill()
                process.wait()
    assert holder.returncode == 0
    assert "truncated" in output and output.startswith("error ")


def test_images_are_copied_while_another_process_writes_their_file(tmp_path, caplog):
    """No read lease while the file is open for writing: the images are copied, and the
    reason is logged once."""
    images = _images("<u2")
    path = tmp_path / "being_written.h5"
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = images
    skip_unless_leases_are_taken(tmp_path)
    reader = ImageReader(memory_map=True)
    with process_holding_open_for_writing(path, "r+b"), caplog.at_level(
            logging.INFO, logger="om.data_retrieval_layer.nxmx_files"):
        for index in range(SHAPE[0]):
            image = reader.read(_block(path, "/data/data"), index)
            assert isinstance(image, np.ndarray) and image.flags.writeable
            assert np.array_equal(image, images[index])
    refusals = [r.getMessage() for r in caplog.records if "not memory-mapped" in r.getMessage()]
    assert len(refusals) == 1 and "open for writing" in refusals[0]
    # The writer gone, the images are mapped again.
    assert isinstance(reader.read(_block(path, "/data/data"), 0), MappedImage)
    reader.close()
