# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel benchmark: calibration + peakfinder8 + hit decision per JUNGFRAU 1M frame, one core.

Run: ``python benchmarks/bench_kernel.py [--repeats 10]`` (after ``pip install .``). Uses the
20 real module frames of ../shared/data as both modules of a 1M frame, the real 1M geometry and
the example monitor.yaml's peakfinder8 settings. Prints ms/frame (median over frames and
repeats), frames/s and the split between calibration and peak finding, and the ratio to the
reference monitor's 47 ms per frame measured on this kind of machine (issue 5). Then the
cost of watching the sample on the same calibrated frames: the saturated pixel count and the
radial profile (om/processing_layer/sample_watch.py, with the crystallography group's defaults:
every 4th row; and with every row, for comparison), separately and together (issue 21: at most
0.3 ms per 1M frame together), after the frame's calibration and peakfinder8 as in the monitor.
"""

import argparse
import os
import time

import numpy as np

from common import GEOMETRY_1M, HelpFormatter, monitor_kernel, need_real_data, real_raw_1m_frames

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
    sample_watch_costs(raw, calibration, finder, arguments.repeats)


def sample_watch_costs(raw, calibration, finder, repeats: int) -> None:
    """Prints the saturation and radial profile costs per 1M frame where the monitor pays
    them: right after calibration and peakfinder8 (the frame still in the CPU caches), and on
    a frame that is not in the caches (a pass over it for the saturated pixels, the profile)."""
    from om.lib.geometry import load_geometry
    from om.processing_layer.radial_profile import RadialProfile
    from om.processing_layer.sample_watch import SAMPLE_WATCH_PARAMETERS
    from om.processing_layer.saturation import SaturationCounter

    defaults = {parameter.name: parameter.default for parameter in SAMPLE_WATCH_PARAMETERS}
    geometry = load_geometry(GEOMETRY_1M)
    saturation = SaturationCounter(panels=geometry.panel_rectangles, shape=geometry.slab_shape,
                                   limit=None, peak_radius=defaults["saturation_peak_radius"])
    step = defaults["radial_profile_row_step"]
    profiles = {row_step: RadialProfile(radius_map=geometry.radius,
                                        bin_size=defaults["radial_profile_bin_size"],
                                        row_step=row_step, good_pixels=geometry.bad_region_mask)
                for row_step in (step, 1)}
    out = np.empty((1024, 1024), dtype=np.float32)
    cold = [calibration.calibrate(frame)[0] for frame in raw]  # 80 MB: beyond the caches
    times: dict[str, list[float]] = {"saturation": [], "limit": [], "profile": [],
                                     "every_row": [], "cold": []}
    for _ in range(repeats):
        for index, frame in enumerate(raw):
            calibration.calibrate(frame, out=out)
            found = finder.find_peaks(out)
            # JUNGFRAU: the calibration counted the saturated pixels (the frame is not read
            # again), only the boxes around the peaks are.
            start = time.perf_counter()
            saturation.count_in_peaks(out, found.fs, found.ss)
            middle = time.perf_counter()
            profiles[step].compute(out)
            end = time.perf_counter()
            profiles[1].compute(out)
            every_row = time.perf_counter()
            saturation.count(out)  # what a configured saturation_limit adds
            times["limit"].append(1e3 * (time.perf_counter() - every_row))
            every_row = time.perf_counter()
            saturation.count(cold[index])
            profiles[step].compute(cold[index])
            times["cold"].append(1e3 * (time.perf_counter() - every_row))
            times["saturation"].append(1e3 * (middle - start))
            times["profile"].append(1e3 * (end - middle))
            times["every_row"].append(1e3 * (every_row - end))
    both = np.median(np.add(times["saturation"], times["profile"]))
    print("  watching the sample, after calibration and peakfinder8 (as in the monitor):")
    print(f"  saturation       median {np.median(times['saturation']):6.3f} ms/frame (the "
          f"calibration's count, the peaks' pixels; a saturation_limit's pass over the frame "
          f"adds {np.median(times['limit']):.3f} ms)")
    print(f"  radial profile   median {np.median(times['profile']):6.3f} ms/frame (every "
          f"{step}th row; every row: {np.median(times['every_row']):.3f} ms)")
    print(f"  saturation+radial profile median {both:6.3f} ms/frame (target <= 0.3 ms); "
          f"on a frame not in the caches {np.median(times['cold']):.3f} ms")


if __name__ == "__main__":
    main()
