# SPDX-License-Identifier: GPL-3.0-or-later
"""Contention benchmark: the kernel on one core, alone and beside work on another core.

Run: ``python benchmarks/bench_contention.py [--rounds 4] [--frames 100] [--read-rate 600]``.
Inside the monitor, a processing rank's kernel (calibration + peakfinder8 + hit decision) runs
10-30 % slower than ``bench_kernel.py`` measures it alone, although the rank's own time outside
the kernel is ~5 % (``bench_files.py``). This script measures why: it times the kernel, pinned
to one core, on the real frames of ../shared/data, alternately alone and with a neighbour
process pinned to another core, and prints the slowdown each neighbour causes. The
neighbours are:

* ``compute``: a Python loop on a few integers (a busy core, hardly any memory traffic);
* ``memory``: numpy copies between two 16 MB arrays (streams memory as fast as one core can);
* ``file reader``: what a processing rank's read-ahead thread does (om.lib.read_ahead with
  om.data_retrieval_layer.hdf5_direct_read): raw 1M images read with ``preadv`` from an HDF5
  file in the page cache into new arrays, ``--read-rate`` images a second.

Alone and beside a neighbour alternate ``--rounds`` times (the host's speed drifts within
minutes); each figure is the median ms per frame over all the rounds. Needs 2 cores.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

from common import HelpFormatter, monitor_kernel, need_real_data, real_raw_1m_frames

_NEIGHBOURS = ("compute", "memory", "file reader")
_NEIGHBOUR_LIFETIME_S = 300.0  # a neighbour whose parent died stops by itself
_IMAGES_IN_FILE = 100


def _compute() -> None:
    value = 1
    deadline = time.monotonic() + _NEIGHBOUR_LIFETIME_S
    while time.monotonic() < deadline:
        for _ in range(100000):
            value = (value * 3 + 1) & 0xFFFF


def _memory() -> None:
    first = np.ones(2 << 20)  # 16 MB of float64
    second = np.zeros_like(first)
    deadline = time.monotonic() + _NEIGHBOUR_LIFETIME_S
    while time.monotonic() < deadline:
        np.copyto(second, first)
        np.copyto(first, second)


def _file_reader(path: str, rate: float) -> None:
    from om.data_retrieval_layer.hdf5_direct_read import direct_layout

    with h5py.File(path, "r") as handle:
        layout = direct_layout(handle["raw"])
        fd = handle.id.get_vfd_handle()
        offsets = [layout.image_offset(index) for index in range(layout.num_images)]
        start = time.monotonic()
        count = 0
        while time.monotonic() < start + _NEIGHBOUR_LIFETIME_S:
            layout.read(fd, offsets[count % len(offsets)])
            count += 1
            pause = start + count / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)


def _run_neighbour(kind: str, core: int, path: str, rate: float) -> None:
    os.sched_setaffinity(0, {core})
    if kind == "compute":
        _compute()
    elif kind == "memory":
        _memory()
    else:
        _file_reader(path, rate)


def _time_kernel(frames: np.ndarray, count: int, kernel: tuple, out: np.ndarray) -> list[float]:
    """ms per frame of calibration + peakfinder8 + hit decision for ``count`` frames."""
    calibration, finder, min_peaks, max_peaks = kernel
    times = []
    for index in range(count):
        start = time.perf_counter()
        calibration.calibrate(frames[index % len(frames)], out=out)
        is_hit = min_peaks < len(finder.find_peaks(out)) < max_peaks  # noqa: F841 (timed)
        times.append(1e3 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternations of alone and beside each neighbour (default 4)")
    parser.add_argument("--frames", type=int, default=100,
                        help="frames timed per measurement (default 100)")
    parser.add_argument("--read-rate", type=float, default=600.0,
                        help="images a second the file reader reads (default 600, about a "
                        "processing rank's rate in bench_files.py)")
    parser.add_argument("--neighbour", choices=_NEIGHBOURS, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.neighbour:  # this process is a neighbour, started by main() below
        _run_neighbour(arguments.neighbour, arguments.core, arguments.file, arguments.read_rate)
        return
    need_real_data()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("skipped: the contention benchmark needs 2 cores")
    os.sched_setaffinity(0, {cores[0]})
    raw, _ = real_raw_1m_frames()
    kernel = monitor_kernel()
    out = np.empty(raw.shape[1:], dtype=np.float32)
    _time_kernel(raw, 1, kernel, out)  # compile (or load numba's cache)
    with tempfile.TemporaryDirectory(prefix="om_bench_contention_") as folder:
        path = str(pathlib.Path(folder) / "raw_1m.h5")
        with h5py.File(path, "w") as handle:
            handle["raw"] = np.resize(raw, (_IMAGES_IN_FILE, *raw.shape[1:]))
        alone: list[float] = []
        beside: dict[str, list[float]] = {kind: [] for kind in _NEIGHBOURS}
        for _ in range(arguments.rounds):
            for kind in _NEIGHBOURS:
                alone += _time_kernel(raw, arguments.frames, kernel, out)
                neighbour = subprocess.Popen(
                    [sys.executable, __file__, "--neighbour", kind, "--core", str(cores[1]),
                     "--file", path, "--read-rate", str(arguments.read_rate)])
                time.sleep(0.5)  # started, and its memory touched
                beside[kind] += _time_kernel(raw, arguments.frames, kernel, out)
                neighbour.kill()
                neighbour.wait(10)
    base = float(np.median(alone))
    print(f"contention: kernel on core {cores[0]}, neighbour on core {cores[1]}, "
          f"{arguments.rounds} rounds of {arguments.frames} frames, median ms per 1M frame")
    print(f"  alone                     {base:5.2f} ms")
    for kind in _NEIGHBOURS:
        label = (f"{kind} ({arguments.read_rate:.0f} images/s)" if kind == "file reader"
                 else kind)
        median = float(np.median(beside[kind]))
        print(f"  beside {label:<19} {median:5.2f} ms ({median / base:.2f}x)")


if __name__ == "__main__":
    main()
