# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel benchmark: calibration + peakfinder8 + hit decision per JUNGFRAU 1M frame, one core.

Run: ``python benchmarks/bench_kernel.py [--repeats 10]`` (after ``pip install .``). Uses the
20 real module frames of ../shared/data as both modules of a 1M frame, the real 1M geometry and
the example monitor.yaml's peakfinder8 settings. Prints ms/frame (median over frames and
repeats), frames/s and the split between calibration and peak finding, and the ratio to the
reference monitor's 47 ms per frame measured on this kind of machine (issue 5).
"""

import argparse
import os
import time

import numpy as np

from common import HelpFormatter, monitor_kernel, need_real_data, real_raw_1m_frames

REFERENCE_MS_PER_FRAME = 47.0  # OM 23: numpy calibration + C++ peakfinder8, one core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="passes over the 20 frames")
    arguments = parser.parse_args()
    need_real_data()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    raw, _ = real_raw_1m_frames()
    calibration, finder, min_peaks, max_peaks = monitor_kernel()
    out = np.empty((1024, 1024), dtype=np.float32)
    calibration.calibrate(raw[0], out=out)  # compile (or load the numba cache)
    finder.find_peaks(out)
    calibrate_ms, find_ms, total_ms, peaks, hits = [], [], [], [], 0
    for _ in range(arguments.repeats):
        for frame in raw:
            start = time.perf_counter()
            calibration.calibrate(frame, out=out)
            middle = time.perf_counter()
            found = finder.find_peaks(out)
            is_hit = min_peaks < len(found) < max_peaks
            end = time.perf_counter()
            calibrate_ms.append(1e3 * (middle - start))
            find_ms.append(1e3 * (end - middle))
            total_ms.append(1e3 * (end - start))
            peaks.append(len(found))
            hits += is_hit
    median = float(np.median(total_ms))
    print(f"kernel: {len(total_ms)} frames (20 real frames x {arguments.repeats}), one core")
    print(f"  calibration      median {np.median(calibrate_ms):6.2f} ms/frame")
    print(f"  peakfinder8+hit  median {np.median(find_ms):6.2f} ms/frame")
    print(f"  total            median {median:6.2f} ms/frame, p90 {np.percentile(total_ms, 90):.2f} ms,"
          f" {1e3 / median:.0f} frames/s/core")
    print(f"  peaks per frame {min(peaks)}-{max(peaks)}, hits {hits}/{len(total_ms)}")
    print(f"  speed-up over the reference monitor's {REFERENCE_MS_PER_FRAME:.0f} ms/frame: "
          f"{REFERENCE_MS_PER_FRAME / median:.1f}x (target >= 11.75x: 4 ms)")


if __name__ == "__main__":
    main()
