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
0.3 ms per 1M frame together).
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
    sample_watch_costs(raw, calibration, arguments.repeats)


def _median_ms(function, frames, repeats: int) -> float:
    function(frames[0])  # compile (or load the numba cache)
    times = []
    for _ in range(repeats):
        for frame in frames:
            start = time.perf_counter()
            function(frame)
            times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times))


def sample_watch_costs(raw, calibration, repeats: int) -> None:
    """Prints the saturation and radial profile costs per calibrated 1M frame."""
    from om.lib.geometry import load_geometry
    from om.processing_layer.radial_profile import RadialProfile
    from om.processing_layer.sample_watch import SAMPLE_WATCH_PARAMETERS
    from om.processing_layer.saturation import SaturationCounter

    defaults = {parameter.name: parameter.default for parameter in SAMPLE_WATCH_PARAMETERS}
    geometry = load_geometry(GEOMETRY_1M)
    frames = [calibration.calibrate(frame)[0] for frame in raw]
    saturation = SaturationCounter(panels=geometry.panel_rectangles, shape=geometry.slab_shape,
                                   limit=None, peak_radius=defaults["saturation_peak_radius"])
    profiles = {step: RadialProfile(radius_map=geometry.radius,
                                    bin_size=defaults["radial_profile_bin_size"], row_step=step,
                                    good_pixels=geometry.bad_region_mask)
                for step in (defaults["radial_profile_row_step"], 1)}
    step = defaults["radial_profile_row_step"]
    saturation_ms = _median_ms(saturation.count, frames, repeats)
    profile_ms = _median_ms(profiles[step].compute, frames, repeats)
    every_row_ms = _median_ms(profiles[1].compute, frames, repeats)
    both_ms = _median_ms(lambda f: (saturation.count(f), profiles[step].compute(f)), frames,
                         repeats)
    print(f"  saturation       median {saturation_ms:6.3f} ms/frame")
    print(f"  radial profile   median {profile_ms:6.3f} ms/frame (every {step}th row; every "
          f"row: {every_row_ms:.3f} ms)")
    print(f"  saturation+radial profile median {both_ms:6.3f} ms/frame (target <= 0.3 ms)")


if __name__ == "__main__":
    main()
