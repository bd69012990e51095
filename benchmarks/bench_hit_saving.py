# SPDX-License-Identifier: GPL-3.0-or-later
"""Hit saving alone: the real frames written into CXI files as a processing rank writes them.

Run: ``python benchmarks/bench_hit_saving.py --frames 200 [--folder DIR]``.
Calibrates the 20 real module frames of ../shared/data as 1M frames (the module twice) and finds
their peaks with the monitor's own kernel and settings (``common.monitor_kernel``), then writes
``--frames`` of them (cycling) with their peak lists through om's CXI writer
(``om.lib.cxi_writer.CxiFile``, in SWMR mode, flushed once a second as by default) for every data
type (float32 photons, int32 rounded photons) and compression (bitshuffle-lz4, gzip, none), in
``--folder`` (default: a temporary folder; put it on the disk you mean to save to). Prints, per
combination, the CPU time per frame of the writing rank, the bytes per frame on disk, the MB/s
one core could write at that cost, and the size against raw float32 frames (4 MiB).
"""

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from common import HelpFormatter, monitor_kernel, need_real_data, real_raw_1m_frames

from om.lib.cxi_writer import CxiFile, FrameRecord


def _frames_and_peaks() -> list[tuple[np.ndarray, object]]:
    calibration, finder, _, _ = monitor_kernel()
    raw, _ = real_raw_1m_frames()
    result = []
    for image in raw:
        frame, _ = calibration.calibrate(image)
        frame = np.array(frame, dtype=np.float32)
        result.append((frame, finder.find_peaks(frame)))
    return result


def measure(folder: pathlib.Path, data_type: str, compression: str, frames: int,
            inputs: list[tuple[np.ndarray, object]]) -> dict[str, float]:
    """Writes ``frames`` frames into one file; returns ms/frame (CPU of this process),
    bytes/frame and the file's path."""
    path = folder / f"bench-{data_type}-{compression}.cxi"
    path.unlink(missing_ok=True)
    cxi = CxiFile(str(path), frame_shape=inputs[0][0].shape, data_type=data_type,
                  compression=compression, max_num_peaks=2048, attributes={})
    start = time.process_time()
    last_flush = time.monotonic()
    for index in range(frames):
        frame, peaks = inputs[index % len(inputs)]
        cxi.append(frame, peaks, FrameRecord(str(index), time.time(), True, 12400.0, 100.0))
        if time.monotonic() - last_flush >= 1.0:
            cxi.flush()
            last_flush = time.monotonic()
    size = cxi.close()
    elapsed = time.process_time() - start
    path.unlink()
    return {"ms_per_frame": 1e3 * elapsed / frames, "bytes_per_frame": size / frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="frames written per file")
    parser.add_argument("--folder", type=pathlib.Path, default=None,
                        help="where to write (default: a new temporary folder, removed after)")
    arguments = parser.parse_args()
    need_real_data()
    inputs = _frames_and_peaks()
    folder = arguments.folder or pathlib.Path(tempfile.mkdtemp(prefix="om_bench_saving_"))
    folder.mkdir(parents=True, exist_ok=True)
    raw_float32 = inputs[0][0].nbytes
    peaks = np.mean([len(p.fs) for _, p in inputs])
    print(f"hit saving: {arguments.frames} real 1M frames ({peaks:.0f} peaks each on average) "
          f"per file, in {folder}")
    sizes = {}
    try:
        for data_type in ("float32", "int32"):
            for compression in ("bitshuffle-lz4", "gzip", "none"):
                figures = measure(folder, data_type, compression, arguments.frames, inputs)
                per_frame = figures["bytes_per_frame"]
                sizes[data_type, compression] = per_frame
                print(f"  {data_type:7} {compression:14} {figures['ms_per_frame']:6.2f} ms/frame "
                      f"CPU, {per_frame / 1e6:6.3f} MB/frame, "
                      f"{per_frame / 1e6 / figures['ms_per_frame'] * 1e3:7.1f} MB/s "
                      f"per core, raw float32 / this: {raw_float32 / per_frame:5.2f}x")
    finally:
        if arguments.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    ratio = raw_float32 / sizes["int32", "bitshuffle-lz4"]
    print(f"int32 photons with bitshuffle-lz4: {ratio:.1f}x smaller than raw float32 "
          f"(target: at least 3x)")


if __name__ == "__main__":
    sys.exit(main())
