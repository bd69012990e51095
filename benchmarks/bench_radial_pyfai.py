# SPDX-License-Identifier: GPL-3.0-or-later
"""pyFAI's azimuthal integration of a 1M frame, for comparison with om's radial profile.

Run: ``python benchmarks/bench_radial_pyfai.py [--repeats 20]`` where pyFAI is installed
(``pip install pyFAI``; om does not depend on it). A flat 1024 x 1024 detector of 75 um pixels
at 100 mm, the beam at its centre, 400 radial bins, a noisy frame; prints the median time per
frame of ``integrate1d`` with the CSR sparse-matrix engine (pyFAI's fastest on a CPU, its
look-up table built once) and with the plain histogram. om's own figure is printed by
``benchmarks/bench_kernel.py`` (``radial profile``).
"""

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="frames timed per method")
    arguments = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    detector = Detector(pixel1=75e-6, pixel2=75e-6, max_shape=(1024, 1024))
    integrator = AzimuthalIntegrator(dist=0.1, poni1=512 * 75e-6, poni2=512 * 75e-6,
                                     detector=detector, wavelength=1e-10)
    frame = np.random.default_rng(0).normal(1.0, 0.3, (1024, 1024)).astype(np.float32)
    for method in (("full", "csr", "cython"), ("no", "histogram", "cython")):
        integrator.integrate1d(frame, 400, method=method, unit="r_mm")  # set-up, caches
        times = []
        for _ in range(arguments.repeats):
            start = time.perf_counter()
            integrator.integrate1d(frame, 400, method=method, unit="r_mm")
            times.append(1e3 * (time.perf_counter() - start))
        print(f"pyFAI integrate1d {'/'.join(method):24s} median {np.median(times):7.3f} ms/frame")


if __name__ == "__main__":
    main()
