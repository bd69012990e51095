# SPDX-License-Identifier: GPL-3.0-or-later
"""Scaling benchmark: sustained events/s against the number of processing ranks.

Run: ``python benchmarks/bench_scaling.py [--max-ranks N] [--rate R] [--duration S]``.
For each rank count the simulator streams the real frames faster than the monitor can follow
(``--rate``), and the sustained events/s is measured as in ``bench_end_to_end.py``; every frame
the monitor could not take is counted, not hidden. The default goes up to the cores available
plus one (one collecting rank). Then it prints, from the kernel's measured cost per frame, the
cores a JUNGFRAU 1M at 2 kHz and a 4M at 1 kHz would need.
"""

import argparse
import os

from bench_end_to_end import run
from common import HelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--max-ranks", type=int, default=len(os.sched_getaffinity(0)) + 1,
                        help="most MPI ranks tried (cores + 1 here)")
    parser.add_argument("--rate", type=float, default=400.0, help="simulator frames/s")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of sending per run")
    parser.add_argument("--kernel-ms", type=float, default=None,
                        help="kernel ms per 1M frame on one core (None: measure it)")
    arguments = parser.parse_args()
    print(f"scaling: simulator at {arguments.rate:.0f} frames/s for {arguments.duration:.0f} s, "
          f"{len(os.sched_getaffinity(0))} cores")
    baseline = None
    for ranks in range(2, arguments.max_ranks + 1):
        figures = run(rate=arguments.rate, duration=arguments.duration, ranks=ranks)
        rate = figures["events_per_second"]
        baseline = baseline or rate
        print(f"  {ranks - 1} processing rank(s): {rate:6.1f} events/s ({rate / baseline:.2f}x), "
              f"dropped busy {figures['dropped_busy']}, p99 latency "
              f"{figures['latency_p99_ms']:.0f} ms", flush=True)
    kernel_ms = arguments.kernel_ms
    if kernel_ms is None:
        import subprocess
        import sys

        kernel_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_kernel.py")
        out = subprocess.run([sys.executable, kernel_script, "--repeats", "3"],
                             capture_output=True, text=True, check=True).stdout
        kernel_ms = float(out.split("total")[1].split("median")[1].split("ms")[0])
    for name, modules, hz in (("JUNGFRAU 1M at 2 kHz", 2, 2000), ("JUNGFRAU 4M at 1 kHz", 8, 1000)):
        cores = hz * kernel_ms * modules / 2 / 1000
        print(f"  on paper, {name}: {cores:.1f} processing cores at {kernel_ms:.2f} ms per 1M "
              f"frame (+1 collecting rank; the reference monitor: "
              f"{hz * 47 * modules / 2 / 1000:.0f} cores)")


if __name__ == "__main__":
    main()
