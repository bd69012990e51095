# SPDX-License-Identifier: GPL-3.0-or-later
"""The scripts of benchmarks/ run after ``pip install`` and print their figures.

Each script runs once, as a user would start it, with the smallest settings that still go
through all of its code (a few frames, a few seconds). Only the presence and the form of the
figures are checked, never their values: timings depend on the machine.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
_NUMBER = r"[\d.]+"

# (script, arguments, lines the output must contain, as regular expressions)
_CASES = {
    "kernel": ("bench_kernel.py", ["--repeats", "1"], [
        rf"total\s+median\s+{_NUMBER} ms/frame, p90 {_NUMBER} ms, \d+ frames/s/core",
        r"peaks per frame \d+-\d+, hits 20/20",
        rf"speed-up over the reference monitor's 47 ms/frame: {_NUMBER}x",
        rf"saturation\s+median\s+{_NUMBER} ms/frame",
        rf"radial profile\s+median\s+{_NUMBER} ms/frame \(every 4th row; every row: {_NUMBER} ms\)",
        rf"saturation\+radial profile median\s+{_NUMBER} ms/frame \(target <= 0.3 ms\); "
        rf"on a frame not in the caches {_NUMBER} ms",
    ]),
    "contention": ("bench_contention.py", ["--rounds", "1", "--frames", "5",
                                           "--read-rate", "50"], [
        rf"alone\s+{_NUMBER} ms",
        rf"beside compute\s+{_NUMBER} ms \({_NUMBER}x\)",
        rf"beside memory\s+{_NUMBER} ms \({_NUMBER}x\)",
        rf"beside file reader \(50 images/s\)\s+{_NUMBER} ms \({_NUMBER}x\)",
    ]),
    "files": ("bench_files.py", ["--ranks", "2", "--repeats", "1", "--kernel-repeats", "1",
                                 "--runs", "1", "--memory-map", "both"], [
        rf"processed 200 / 200, {_NUMBER} events/s \(first to last broadcast\), monitor exit "
        r"code 0",
        r"rank 1 \(processing\): CPU \d+ % of a core, peak RSS \d+ MB",
        rf"collecting rank: {_NUMBER} ms of CPU per event, so at most ~\d+ events/s",
        rf"per event on the processing ranks: next_event {_NUMBER}, data_retrieval {_NUMBER}, "
        rf"processing {_NUMBER}, sending {_NUMBER} ms",
        rf"events/s per processing rank = {_NUMBER} % of it",
        r"raw 1M frames from the page cache, images copied",
        r"raw 1M frames from the page cache, images memory-mapped",
        r"images mapped: (yes \(no lease refused\)|no: .*not memory-mapped)",
        r"1 run, images copied: events/s .*; median",
        r"1 run, images memory-mapped: events/s .*; median",
        rf"share of the kernel alone: {_NUMBER} %; median {_NUMBER} %, \d of 1 runs at "
        r"80 % or more",
    ]),
    "hit saving": ("bench_hit_saving.py", ["--frames", "2"], [
        rf"int32   bitshuffle-lz4 +{_NUMBER} ms/frame CPU, +{_NUMBER} MB/frame, +{_NUMBER} MB/s "
        rf"per core, raw float32 / this: +{_NUMBER}x",
        rf"int32 photons with bitshuffle-lz4: {_NUMBER}x smaller than raw float32",
    ]),
    "image read": ("bench_image_read.py", ["--images", "5", "--rounds", "1"], [
        r"one raw 1M image \(2 MB\) from the page cache, median of 5 per round",
        rf"round 1: copied \(preadv\) {_NUMBER} ms, mapped under a lease {_NUMBER} ms; "
        rf"mapped / copied {_NUMBER}",
    ]),
    "end to end": ("bench_end_to_end.py", ["--ranks", "2", "--rate", "20", "--duration", "3"], [
        r"end to end: mpiexec -n 2 \(1 processing ranks\), simulator at 20 frames/s for 3 s",
        r"frames sent \d+, processed \d+",
        rf"latency detector timestamp -> broadcast received: p50 {_NUMBER}",
        r"rank 1 \(processing\): CPU \d+ % of a core, peak RSS \d+ MB",
        rf"collecting rank: {_NUMBER} ms of CPU per event, so at most ~\d+ events/s",
    ]),
    "scaling": ("bench_scaling.py", ["--max-ranks", "2", "--rate", "20", "--duration", "3",
                                     "--kernel-ms", "1.3"], [
        rf"1 processing rank\(s\):\s+{_NUMBER} events/s \(1.00x\)",
        r"on paper, JUNGFRAU 1M at 2 kHz: 2.6 processing cores at 1.30 ms per 1M frame",
        r"on paper, JUNGFRAU 4M at 1 kHz: 5.2 processing cores",
    ]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_CASES))
def test_benchmark_prints_its_figures(case, real_module_file, geometry_1m):
    script, arguments, expected = _CASES[case]
    environment = dict(os.environ, OM_SHARED_DATA=str(real_module_file.parent))
    completed = subprocess.run([sys.executable, str(BENCHMARKS / script), *arguments],
                               cwd=BENCHMARKS, env=environment, capture_output=True,
                               text=True, timeout=240)
    skipped = re.search(r"^skipped: (.*)$", completed.stderr, re.MULTILINE)
    if skipped:  # e.g. the contention benchmark on a single core
        pytest.skip(f"{script}: {skipped.group(1)}")
    assert completed.returncode == 0, completed.stderr[-2000:]
    for pattern in expected:
        assert re.search(pattern, completed.stdout), (pattern, completed.stdout)
