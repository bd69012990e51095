# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading one raw JUNGFRAU 1M image from an HDF5 file in the page cache: copied or mapped.

Run: ``python benchmarks/bench_image_read.py [--images 400] [--rounds 3]`` (after ``pip
install .``). Writes the 20 real module frames of ../shared/data as 1M frames (raw uint16,
2 MB each) to a temporary HDF5 file, reads it once so that it is in the page cache, then
times, per image, what the files source's read-ahead thread does
(``om.data_retrieval_layer.hdf5_direct_read``): a copy with ``preadv``
(``files_memory_map: false``), and a mapping under a read lease, checked as the processing rank
checks it before use (the default). Prints the median ms per image of each, per round, and
their ratio.
"""

import argparse
import pathlib
import tempfile
import time

import h5py
import numpy as np

from common import HelpFormatter, need_real_data, real_raw_1m_frames
from om.data_retrieval_layer.hdf5_direct_read import direct_layout, usable_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="images timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the best one reported")
    arguments = parser.parse_args()
    need_real_data()
    raw, _ = real_raw_1m_frames()
    with tempfile.TemporaryDirectory(prefix="om_bench_read_") as folder:
        path = pathlib.Path(folder) / "raw_1m.h5"
        with h5py.File(path, "w") as handle:
            handle["raw"] = raw
        with h5py.File(path, "r") as handle:
            dataset = handle["raw"]
            layout = direct_layout(dataset)
            fd = handle.id.get_vfd_handle()
            offsets = [layout.image_offset(index) for index in range(len(raw))]
            for index in range(len(raw)):  # into the page cache, and checked
                assert np.array_equal(layout.read(fd, offsets[index]), raw[index])
            ways = {"copied (preadv)": lambda offset: layout.read(fd, offset),
                    "mapped under a lease": lambda offset: usable_image(layout.map(fd, offset))}
            print(f"one raw 1M image ({raw[0].nbytes / 2**20:.0f} MB) from the page cache, "
                  f"median of {arguments.images} per round")
            for round_number in range(arguments.rounds):
                medians = {}
                for name, read in ways.items():
                    times = []
                    for count in range(arguments.images):
                        start = time.perf_counter()
                        image = read(offsets[count % len(offsets)])
                        times.append(time.perf_counter() - start)
                        del image  # a mapping (and its lease) goes with its array
                    medians[name] = 1e3 * float(np.median(times))
                copied, mapped = medians.values()
                print(f"  round {round_number + 1}: "
                      + ", ".join(f"{name} {ms:.3f} ms" for name, ms in medians.items())
                      + f"; mapped / copied {mapped / copied:.2f}")


if __name__ == "__main__":
    main()
