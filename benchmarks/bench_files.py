# SPDX-License-Identifier: GPL-3.0-or-later
"""End-to-end benchmark without a stream simulator: raw JUNGFRAU files → ``mpiexec -n N om_monitor.py``.

Run: ``python benchmarks/bench_files.py --ranks 2 --repeats 10 [--runs N]
[--memory-map both] [--watch-frames]``.
Writes the 20 real module frames of ../shared/data as 1M frames (the module twice, raw uint16
(n, 1024, 1024), 200 frames, ~400 MB, read back from the page cache) and lets the monitor's
HDF5 files source read them ``--repeats`` times on the processing ranks, calibrate them with
the real constants and search them with the example ``monitor.yaml``'s peakfinder8 settings.
Nothing else competes for the CPU, so this measures what the monitor's pipeline costs around
the kernel: events/s against ``bench_kernel.py``'s frames/s on one core. Prints events/s (from
the first to the last broadcast), CPU and peak RSS of every rank, the monitor's own account of
where the processing ranks' time went per event (its final summary), and, with bench_kernel.py
run just before and after (the host's speed drifts), the events/s per processing rank as a
share of the kernel's frames/s alone. The images are memory-mapped under a read lease, as by
default (``files_memory_map``; the script says when the monitor had to copy them instead);
``--memory-map both`` measures copied and mapped images in alternating runs.
The subscriber takes ``omdata`` only unless ``--watch-frames`` (then ``omframedata`` too, as the
GUI does): the processing ranks send frames only while someone subscribed to them.
"""

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import psutil
import zmq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from bench_end_to_end import _peak_rss_mb, _rank_processes, report_ranks, report_stages
from common import (HelpFormatter, GEOMETRY_1M, Progress, REAL_MODULE_FILE, need_real_data,
                    real_raw_1m_frames)
from helpers import free_port, monitor_command

from om.lib.serialization import unpack
from om.simulation.configuration import write_monitor_configuration
from om.simulation.frame_sources import HDF5FrameSource

_FRAMES_IN_FILE = 200
_IMAGES = {False: "images copied", True: "images memory-mapped"}


def run(*, ranks: int, repeats: int, read_ahead: int | None = None,
        memory_map: bool = True, watch_frames: bool = False,
        hit_frame_interval: int = 10, save: str = "none") -> dict:
    """Runs the monitor once over the files; returns the figures (see the module doc)."""
    need_real_data()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="om_bench_files_"))
    darks, gains = HDF5FrameSource(str(REAL_MODULE_FILE)).write_calibration(folder / "calibration")
    raw, constants = real_raw_1m_frames()
    data_file = folder / "raw_1m.h5"
    with h5py.File(data_file, "w") as handle:
        handle["raw"] = np.resize(raw, (_FRAMES_IN_FILE, *raw.shape[1:]))
    broadcast = f"tcp://127.0.0.1:{free_port()}"
    config = write_monitor_configuration(folder / "monitor.yaml", {
        "om": {"data_retrieval_layer": "Hdf5FilesDataRetrieval"},
        "crystallography": {"geometry_file": str(GEOMETRY_1M), "data_broadcast_url": broadcast,
                            "responding_url": None, "speed_report_interval": 1000,
                            "hit_frame_sending_interval": hit_frame_interval},
        **_hit_saving_group(save, folder),
    }, replace_groups={"data_retrieval_layer": {
        "fallback_beam_energy_in_eV": constants["photon_energy_ev"],
        "fallback_detector_distance_in_mm": 100.0, "files_data_hdf5_path": "/raw",
        "detector_calibration": True, "detector_dark_filenames": darks,
        "detector_gain_filenames": gains,
        "detector_photon_energy_kev": constants["photon_energy_ev"] / 1000.0,
        "files_memory_map": memory_map,
        **({} if read_ahead is None else {"files_read_ahead": read_ahead})}})
    source = ",".join([str(data_file)] * repeats)
    frames_received = None
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"omdata")
    if watch_frames:  # as the GUI does: the processing ranks then send frames
        subscriber.setsockopt(zmq.SUBSCRIBE, b"omframedata")
    frame_broadcasts = 0
    subscriber.connect(broadcast)
    log = open(folder / "monitor.log", "w")  # noqa: SIM115 (closed below)
    monitor = subprocess.Popen(monitor_command(source, config, ranks), stdout=log,
                               stderr=subprocess.STDOUT)
    mpiexec = psutil.Process(monitor.pid)
    processes: dict[int, psutil.Process] = {}
    first = last = None
    cpu_start: dict[int, float] = {}
    cpu_end: dict[int, float] = {}
    rss: dict[int, float] = {}
    deadline = time.monotonic() + 120 + repeats * _FRAMES_IN_FILE / 20.0
    progress = Progress()
    while monitor.poll() is None and time.monotonic() < deadline:
        progress.report(last[1] if last else 0)
        if len(processes) < ranks:
            processes = _rank_processes(mpiexec)
        if not subscriber.poll(200):
            continue
        tag, payload = subscriber.recv_multipart()
        if tag != b"omdata":
            frame_broadcasts += 1
            continue
        message = unpack(payload)
        now = time.monotonic()
        try:
            cpu = {rank: sum(p.cpu_times()[:2]) for rank, p in processes.items()}
            rss = {rank: _peak_rss_mb(p) for rank, p in processes.items()}
        except psutil.NoSuchProcess:
            continue
        if first is None:
            first, cpu_start = (now, message["num_events"]), cpu
        last, cpu_end = (now, message["num_events"]), cpu
        frames_received = message.get("num_frames_received")
    if monitor.poll() is None:
        monitor.kill()
    monitor.wait(30)
    log.close()
    data_file.unlink()  # hundreds of MB per run; the log stays
    saved = sorted((folder / "saved").glob("*.cxi"))
    saved_bytes = sum(path.stat().st_size for path in saved)
    saved_frames = len((folder / "saved" / "hits.lst").read_text().splitlines()) if saved else 0
    shutil.rmtree(folder / "saved", ignore_errors=True)
    shutil.rmtree(folder / "calibration", ignore_errors=True)
    subscriber.close(0)
    if first is None:
        sys.exit(f"no broadcast received from the monitor (exit code {monitor.returncode}); "
                 f"see {folder / 'monitor.log'}")
    elapsed = max(last[0] - first[0], 1e-9)
    return {"ranks": ranks, "events": last[1], "expected": repeats * _FRAMES_IN_FILE,
            "events_per_second": (last[1] - first[1]) / elapsed,
            "cpu": {rank: (cpu_end[rank] - cpu_start.get(rank, 0.0)) / elapsed
                    for rank in cpu_end},
            "rss_mb": rss, "exit_code": monitor.returncode, "log": str(folder / "monitor.log"),
            "frames_received": frames_received, "frame_broadcasts": frame_broadcasts,
            "saved_frames": saved_frames, "saved_bytes": saved_bytes}


def _hit_saving_group(save: str, folder: pathlib.Path) -> dict:
    """The monitor's hit_saving group for ``--save`` (none, or DATA_TYPE:COMPRESSION: every
    frame saved into folder/saved)."""
    if save == "none":
        return {}
    data_type, compression = save.split(":")
    return {"hit_saving": {"frames": "all", "output_directory": str(folder / "saved"),
                           "data_type": data_type, "compression": compression,
                           "min_free_disk_space_gb": 0.5}}


def kernel_ms_per_frame(repeats: int) -> float:
    """bench_kernel.py's median ms per frame, run as a process of its own (it pins itself to
    one core, which this process and the monitor it starts must not inherit)."""
    output = subprocess.run([sys.executable, str(pathlib.Path(__file__).with_name(
        "bench_kernel.py")), "--repeats", str(repeats)], capture_output=True, text=True,
        check=True).stdout
    return float(re.search(r"total\s+median\s+([\d.]+) ms", output).group(1))


def measure_once(arguments: argparse.Namespace,
                 memory_map: bool) -> tuple[float, float | None]:
    """One run of the monitor, with bench_kernel.py just before and after it; prints its
    figures and returns (events/s, events/s per processing rank as a share of the kernel's
    frames/s alone, or None without kernel runs)."""
    kernel = [kernel_ms_per_frame(arguments.kernel_repeats)] if arguments.kernel_repeats else []
    figures = run(ranks=arguments.ranks, repeats=arguments.repeats,
                  read_ahead=arguments.read_ahead, memory_map=memory_map,
                  watch_frames=arguments.watch_frames,
                  hit_frame_interval=arguments.hit_frame_interval, save=arguments.save)
    if kernel:
        kernel.append(kernel_ms_per_frame(arguments.kernel_repeats))
    print(f"files end to end: mpiexec -n {figures['ranks']} ({figures['ranks'] - 1} processing "
          f"ranks), {figures['expected']} raw 1M frames from the page cache, "
          f"{_IMAGES[memory_map]}")
    print(f"  processed {figures['events']} / {figures['expected']}, "
          f"{figures['events_per_second']:.1f} events/s (first to last broadcast), "
          f"monitor exit code {figures['exit_code']}")
    print(f"  frames sent to the collecting rank: {figures['frames_received']}; omframedata "
          f"broadcasts received: {figures['frame_broadcasts']}"
          f"{'' if arguments.watch_frames else ' (not subscribed)'}")
    if arguments.save != "none":
        per_frame = figures["saved_bytes"] / max(figures["saved_frames"], 1) / 1e6
        print(f"  saved ({arguments.save}): {figures['saved_frames']} frames listed in hits.lst, "
              f"{per_frame:.3f} MB/frame, {per_frame * figures['events_per_second']:.1f} MB/s")
    report_ranks(figures["cpu"], figures["rss_mb"], figures["events_per_second"])
    if memory_map:
        with open(figures["log"], encoding="utf-8", errors="replace") as log:
            refused = [line.strip() for line in log if "not memory-mapped" in line]
        print(f"  images mapped: {'no: ' + refused[0] if refused else 'yes (no lease refused)'}")
    stages = report_stages(figures["log"])
    share = None
    if kernel:
        alone = sum(kernel) / len(kernel)
        per_rank = figures["events_per_second"] / max(figures["ranks"] - 1, 1)
        share = per_rank * alone / 1e3
        print(f"  kernel alone (bench_kernel.py before and after: "
              f"{' and '.join(f'{k:.2f}' for k in kernel)} ms) {alone:.2f} ms/frame = "
              f"{1e3 / alone:.0f} frames/s; events/s per processing rank = "
              f"{100 * share:.1f} % of it")
        if stages:
            in_place = stages["data_retrieval"] + stages["processing"]
            print(f"  kernel in place / alone: {in_place / alone:.2f}")
    print(f"  log: {figures['log']}", flush=True)
    return figures["events_per_second"], share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks (1 collecting)")
    parser.add_argument("--repeats", type=int, default=10,
                        help=f"times the {_FRAMES_IN_FILE}-frame file is listed (default 10)")
    parser.add_argument("--kernel-repeats", type=int, default=5,
                        help="repeats of bench_kernel.py run before and after, for the ratio "
                        "to the kernel alone on this machine at this time (0: skip)")
    parser.add_argument("--read-ahead", type=int, default=None,
                        help="files_read_ahead of the monitor (default: the example "
                        "monitor.yaml's; 0: read in the event loop)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure this many times and print the medians (the host's speed "
                        "varies from run to run; default 1)")
    parser.add_argument("--memory-map", choices=("off", "on", "both"), default="on",
                        help="files_memory_map of the monitor; both: alternate the two in "
                        "each run (default on, the monitor's default)")
    parser.add_argument("--watch-frames", action="store_true",
                        help="subscribe to omframedata too, as the GUI does (the processing "
                        "ranks send frames only while someone subscribed)")
    parser.add_argument("--hit-frame-interval", type=int, default=10,
                        help="hit_frame_sending_interval of the monitor (default 10; the "
                        "example monitor.yaml's is 1: every hit)")
    parser.add_argument("--save", default="none",
                        help="save every frame (hit_saving, frames: all) as "
                        "DATA_TYPE:COMPRESSION, e.g. int32:bitshuffle-lz4 or float32:none, into the run's temporary "
                        "folder (default none: no saving)")
    arguments = parser.parse_args()
    need_real_data()
    modes = {"off": [False], "on": [True], "both": [False, True]}[arguments.memory_map]
    rates: dict[bool, list[float]] = {mode: [] for mode in modes}
    shares: dict[bool, list[float]] = {mode: [] for mode in modes}
    for _ in range(arguments.runs):
        for mode in modes:
            rate, share = measure_once(arguments, mode)
            rates[mode].append(rate)
            if share is not None:
                shares[mode].append(share)
    if arguments.runs > 1 or len(modes) > 1:
        for mode in modes:
            runs = f"{arguments.runs} run{'s' if arguments.runs > 1 else ''}"
            _print_medians(f"{runs}, {_IMAGES[mode]}", rates[mode], shares[mode])


def _print_medians(title: str, rates: list[float], shares: list[float]) -> None:
    print(f"{title}: events/s {', '.join(f'{r:.1f}' for r in rates)}; "
          f"median {np.median(rates):.1f}")
    if shares:
        print(f"  events/s per processing rank as a share of the kernel alone: "
              f"{', '.join(f'{100 * s:.1f}' for s in shares)} %; median "
              f"{100 * np.median(shares):.1f} %, {sum(s >= 0.8 for s in shares)} of "
              f"{len(shares)} runs at 80 % or more")


if __name__ == "__main__":
    main()
