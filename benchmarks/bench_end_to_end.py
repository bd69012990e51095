# SPDX-License-Identifier: GPL-3.0-or-later
"""End-to-end benchmark: simulator → ``mpiexec -n N om_monitor.py`` → subscriber, on 127.0.0.1.

Run: ``python benchmarks/bench_end_to_end.py --rate 200 --ranks 3 --duration 20``.
The simulator replays the real module frames of ../shared/data as both modules of a 1M (or
simulated frames with ``--synthetic``) at ``--rate`` frames/s beside the monitor, on the same
machine. Prints events/s processed, frames lost and where, latency from the detector timestamp
to the broadcast (p50, p99, measured by a subscriber on every ``omdata`` message), and CPU use
and peak RSS (VmHWM) of every rank.
"""

import argparse
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import zmq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from common import HelpFormatter, GEOMETRY_1M, Progress, REAL_MODULE_FILE, need_real_data  # noqa: E402
from helpers import free_port, monitor_command, simulator_command  # noqa: E402

from om.lib.serialization import unpack  # noqa: E402
from om.parallelization_layer.rank_guard import RANK_PROCESS  # noqa: E402
from om.lib.stage_times import STAGES  # noqa: E402
from om.simulation.configuration import write_monitor_configuration  # noqa: E402
from om.simulation.frame_sources import HDF5FrameSource  # noqa: E402



def _rank_processes(mpiexec: psutil.Process) -> dict[int, psutil.Process]:
    ranks = {}
    for child in mpiexec.children(recursive=True):
        try:
            environ = child.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        # The rank itself, not its guard (om.parallelization_layer.rank_guard).
        if "PMI_RANK" in environ and RANK_PROCESS in environ:
            ranks[int(environ["PMI_RANK"])] = child
    return ranks


def _assembler_process(collecting: psutil.Process | None) -> psutil.Process | None:
    """The collecting rank's frame assembler process (``frame_assembly_process``), if any."""
    for child in collecting.children() if collecting is not None else []:
        try:
            if any("frame_assembler_process" in part for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _thread_cpu(process: psutil.Process | None) -> dict[str, float]:
    """CPU seconds of a process's threads: ``python`` (they share the GIL), ``zeromq``
    (libzmq's I/O threads, named ZMQbg/IO/...) and ``zeromq_<n>`` for each I/O thread."""
    if process is None:
        return {}
    totals = {"python": 0.0, "zeromq": 0.0}
    try:
        for thread in process.threads():
            name = pathlib.Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text()
            seconds = thread.user_time + thread.system_time
            if name.startswith("ZMQbg/IO/"):
                totals["zeromq"] += seconds
                totals[f"zeromq_{thread.id}"] = seconds  # several contexts: ids, not names
            elif not name.startswith("ZMQbg"):
                totals["python"] += seconds
    except (psutil.Error, FileNotFoundError):
        pass
    return totals


def _peak_rss_mb(process: psutil.Process) -> float:
    status = pathlib.Path(f"/proc/{process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def run(*, rate: float, duration: float, ranks: int, hit_frame_sending_interval: int = 10,
        synthetic: bool = False, frame_queue_size: int | None = None,
        frozen_subscriber: bool = False, rss_every: float = 0.0,
        assembly_process: bool = True) -> dict:
    """Runs the simulator and the monitor once; returns the figures (see the module doc)."""
    need_real_data()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="om_bench_"))
    darks, gains = HDF5FrameSource(str(REAL_MODULE_FILE)).write_calibration(folder / "calibration")
    broadcast = f"tcp://127.0.0.1:{free_port()}"
    overrides = {
        "data_retrieval_layer": {"detector_dark_filenames": darks,
                                 "detector_gain_filenames": gains},
        "crystallography": {"geometry_file": str(GEOMETRY_1M), "data_broadcast_url": broadcast,
                            "responding_url": None, "speed_report_interval": 1000,
                            "hit_frame_sending_interval": hit_frame_sending_interval},
    }
    source = ["--file", str(REAL_MODULE_FILE)]
    if synthetic:
        from om.simulation.jungfrau_frames import SyntheticJungfrau

        darks, gains = SyntheticJungfrau(seed=0).write_calibration_files(folder / "synthetic")
        overrides["data_retrieval_layer"] = {"detector_dark_filenames": darks,
                                             "detector_gain_filenames": gains}
        source = []
    if frame_queue_size is not None:
        overrides["data_retrieval_layer"]["frame_queue_size"] = frame_queue_size
    overrides["data_retrieval_layer"]["frame_assembly_process"] = assembly_process
    config = write_monitor_configuration(folder / "monitor.yaml", overrides)
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    frames = int(rate * duration)
    log = open(folder / "monitor.log", "w")
    monitor = subprocess.Popen(monitor_command(urls, config, ranks), stdout=log,
                               stderr=subprocess.STDOUT)
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"omdata")
    subscriber.connect(broadcast)
    frozen = None
    if frozen_subscriber:  # a GUI that froze: subscribed to everything, never reading
        frozen = zmq.Context.instance().socket(zmq.SUB)
        frozen.setsockopt(zmq.RCVHWM, 1)
        frozen.setsockopt(zmq.SUBSCRIBE, b"")
        frozen.connect(broadcast)
    simulator = subprocess.Popen(simulator_command(urls, *source, "--rate", str(rate),
                                                   "--frames", str(frames)),
                                 stdout=subprocess.PIPE, text=True)
    latencies, last, first_time, first_events = [], {}, None, 0
    last_received = time.monotonic()
    sent: int | None = None  # known when the simulator has ended
    mpiexec = psutil.Process(monitor.pid)
    processes: dict[int, psutil.Process] = {}
    cpu_start: dict[int, float] = {}
    threads_start: dict[str, dict[str, float]] = {}
    # Bounds the run only; how long the monitor takes to start or to catch up never ends it.
    deadline = time.monotonic() + duration + 600
    rss_samples: list[tuple[float, dict[int, float]]] = []  # (s since start, {rank: MB})
    started = next_rss = time.monotonic()
    progress = Progress()
    while time.monotonic() < deadline:
        progress.report(last["num_events"] if last else 0)
        if len(processes) < ranks:
            processes = _rank_processes(mpiexec)
        if rss_every > 0 and time.monotonic() >= next_rss and len(processes) == ranks:
            next_rss += rss_every
            try:
                sample = {rank: _rss_mb(p) for rank, p in processes.items()}
                assembler = _assembler_process(processes.get(0))
                if assembler is not None:
                    sample["assembler"] = _rss_mb(assembler)
                rss_samples.append((time.monotonic() - started, sample))
            except psutil.NoSuchProcess:
                pass
        if subscriber.poll(200):
            _, payload = subscriber.recv_multipart()
            now = time.time()
            last = unpack(payload)
            last_received = time.monotonic()
            if first_time is None:
                first_time, first_events = time.monotonic(), last["num_events"]
                cpu_start = {rank: sum(p.cpu_times()[:2]) for rank, p in processes.items()}
                assembler = _assembler_process(processes.get(0))
                threads_start = {"collecting rank": _thread_cpu(processes.get(0)),
                                 "assembler process": _thread_cpu(assembler)}
            latencies.append(now - last["timestamp"])
        if sent is None and simulator.poll() is not None:
            sent = int(re.search(r"sent (\d+) frames", simulator.stdout.read()).group(1))
            simulator_ended = time.monotonic()
        if sent is not None and (_accounted(last) >= sent
                                 or time.monotonic() - max(last_received, simulator_ended) > 60):
            break  # every frame sent is processed or counted lost (or the monitor went silent)
    elapsed = last_received - (first_time or last_received)
    cpu = {rank: (sum(p.cpu_times()[:2]) - cpu_start.get(rank, 0.0)) / max(elapsed, 1e-9)
           for rank, p in processes.items()}
    rss = {rank: _peak_rss_mb(p) for rank, p in processes.items()}
    assembler = _assembler_process(processes.get(0))
    threads_end = {"collecting rank": _thread_cpu(processes.get(0)),
                   "assembler process": _thread_cpu(assembler)}
    if assembler is not None:
        rss["assembler process"] = _peak_rss_mb(assembler)
    threads = {owner: {kind: (seconds - threads_start.get(owner, {}).get(kind, 0.0))
                       / max(elapsed, 1e-9) for kind, seconds in threads_end[owner].items()}
               for owner in threads_end if threads_end[owner]}
    monitor.send_signal(signal.SIGINT)
    monitor.wait(60)
    simulator.wait(60)
    subscriber.close(0)
    if frozen is not None:
        frozen.close(0)
    for written in ("calibration", "synthetic"):  # tens of MB per run; the log stays
        shutil.rmtree(folder / written, ignore_errors=True)
    if sent is None:
        sent = int(re.search(r"sent (\d+) frames", simulator.stdout.read()).group(1))
    problems = last.get("problems", {})
    latency = np.array(latencies[1:]) if len(latencies) > 1 else np.zeros(1)
    events = last.get("num_events", 0)
    return {
        "rate": rate, "duration": duration, "ranks": ranks, "synthetic": synthetic,
        "frozen_subscriber": frozen_subscriber,
        "hit_frame_sending_interval": hit_frame_sending_interval, "sent": sent,
        "events": events, "events_per_second": (events - first_events) / max(elapsed, 1e-9),
        "dropped_busy": problems.get("frame_dropped_ranks_busy", 0),
        "incomplete": problems.get("incomplete_frame", 0),
        "missed_images": problems.get("missed_module_images", 0),
        "latency_p50_ms": 1e3 * float(np.median(latency)),
        "latency_p99_ms": 1e3 * float(np.percentile(latency, 99)), "broadcasts": latency.size,
        "cpu": cpu, "rss_mb": rss, "rss_samples": rss_samples, "log": str(folder / "monitor.log"),
        "threads": threads, "assembly_process": assembly_process,
    }


def _accounted(omdata: dict) -> int:
    """Frames an omdata message accounts for: processed, or dropped or incomplete (counted)."""
    problems = omdata.get("problems", {})
    return omdata.get("num_events", 0) + sum(problems.get(kind, 0) for kind in (
        "frame_dropped_ranks_busy", "incomplete_frame", "frames_lost_with_rank",
        "results_lost_with_rank"))


# The last line of the monitor's final summary (om.lib.stage_times.describe_per_event).
_STAGES = re.compile("whole run: " + ", ".join(rf"{stage} ([\d.]+)" for stage in STAGES) + " ms")


def report_stages(log: str) -> dict[str, float] | None:
    """Prints (and returns) the monitor's time per event in each stage of its processing
    ranks over the whole run, from its final summary in ``log``; None when it has none."""
    found = _STAGES.search(pathlib.Path(log).read_text())
    if found is None:
        return None
    stages = dict(zip(STAGES, map(float, found.groups())))
    in_place = stages["data_retrieval"] + stages["processing"]
    rest = stages["next_event"] + stages["sending"]
    print(f"  per event on the processing ranks: next_event {stages['next_event']:.2f}, "
          f"data_retrieval {stages['data_retrieval']:.2f}, processing "
          f"{stages['processing']:.2f}, sending {stages['sending']:.2f} ms")
    print(f"  kernel in place (data_retrieval + processing) {in_place:.2f} ms, the rest "
          f"(next_event + sending) {rest:.2f} ms = {100 * rest / (in_place + rest):.0f} %")
    return stages


def report_ranks(cpu: dict[int, float], rss_mb: dict[int, float],
                 events_per_second: float) -> None:
    """Prints each rank's CPU (fraction of a core) and peak RSS (MB), rank 0 collecting, and
    the collecting rank's CPU per event: one collecting rank serves all the processing ranks,
    so that cost bounds the events/s of the whole monitor."""
    for rank in sorted(cpu):
        role = "collecting" if rank == 0 else "processing"
        print(f"  rank {rank} ({role}): CPU {100 * cpu[rank]:.0f} % of a core, "
              f"peak RSS {rss_mb.get(rank, 0.0):.0f} MB")
    if 0 in cpu and cpu[0] > 0 and events_per_second > 0:
        per_event_ms = 1e3 * cpu[0] / events_per_second
        print(f"  collecting rank: {per_event_ms:.2f} ms of CPU per event, so at most "
              f"~{1e3 / per_event_ms:.0f} events/s for the whole monitor")


def report_threads(threads: dict[str, dict[str, float]], events_per_second: float,
                   assembly_process: bool, rss_mb: dict) -> None:
    """Prints the CPU of the Python threads (which share one GIL per process) and of
    libzmq's I/O threads of the collecting rank and of its frame assembler process, per
    event: the Python threads of one process bound the frames/s it can follow."""
    print(f"  frame assembly in {'a process of its own' if assembly_process else 'a thread'}")
    for owner, kinds in threads.items():
        per_event = {kind: 1e3 * share / max(events_per_second, 1e-9)
                     for kind, share in kinds.items()}
        busiest = max((v for k, v in per_event.items() if k.startswith("zeromq_")), default=0.0)
        memory = f", peak RSS {rss_mb[owner]:.0f} MB" if owner in rss_mb else ""
        print(f"  {owner}: Python threads {100 * kinds['python']:.0f} % of a core "
              f"({per_event['python']:.2f} ms per event, so at most "
              f"~{1e3 / max(per_event['python'], 1e-9):.0f} events/s), ZeroMQ I/O threads "
              f"{100 * kinds['zeromq']:.0f} % ({per_event['zeromq']:.2f} ms per event, the "
              f"busiest of {sum(k.startswith('zeromq_') for k in kinds)} "
              f"{busiest:.2f} ms){memory}")


def report(figures: dict) -> None:
    """Prints the figures of one :func:`run`."""
    ranks, sent, events = figures["ranks"], figures["sent"], figures["events"]
    never = sent - events - figures["dropped_busy"] - figures["incomplete"]
    print(f"end to end: mpiexec -n {ranks} ({ranks - 1} processing ranks), simulator at "
          f"{figures['rate']:.0f} frames/s for {figures['duration']:.0f} s, "
          f"{'synthetic' if figures['synthetic'] else 'real'} frames, hit frames sent every "
          f"{figures['hit_frame_sending_interval']}"
          f"{', a frozen subscriber connected' if figures['frozen_subscriber'] else ''}")
    print(f"  frames sent {sent}, processed {events} ({100 * events / max(sent, 1):.1f} %), "
          f"{figures['events_per_second']:.1f} events/s sustained")
    print(f"  lost: {figures['dropped_busy']} dropped with every processing rank busy, "
          f"{figures['incomplete']} incomplete, {never} never assembled (PUB/SUB overflow; "
          f"{figures.get('missed_images', 0)} module images counted missing by the monitor)")
    print(f"  latency detector timestamp -> broadcast received: p50 "
          f"{figures['latency_p50_ms']:.0f} ms, p99 {figures['latency_p99_ms']:.0f} ms "
          f"({figures['broadcasts']} broadcasts)")
    report_ranks(figures["cpu"], figures["rss_mb"], figures["events_per_second"])
    report_threads(figures["threads"], figures["events_per_second"],
                   figures["assembly_process"], figures["rss_mb"])
    samples = figures.get("rss_samples") or []
    if len(samples) >= 2:
        print("  RSS over the run (MB, per rank):")
        def name(rank: int | str) -> str:  # the assembler process is sampled too
            return f"rank {rank}" if isinstance(rank, int) else f"{rank} process"

        for when, by_rank in samples:
            print(f"    t={when:5.0f} s: " + ", ".join(
                f"{name(r)} {mb:.0f}" for r, mb in sorted(by_rank.items(), key=str)))
        later = [by_rank for when, by_rank in samples if when >= 60.0] or [samples[-1][1]]
        for rank in sorted(samples[-1][1], key=str):
            values = [by_rank[rank] for by_rank in later if rank in by_rank]
            print(f"  {name(rank)}: RSS after the first minute {min(values):.0f}-"
                  f"{max(values):.0f} MB (growth {values[-1] - values[0]:+.1f} MB)")
    report_stages(figures["log"])
    print(f"  log: {figures['log']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="simulator frames/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    parser.add_argument("--ranks", type=int, default=3, help="MPI ranks (1 collecting)")
    parser.add_argument("--hit-frame-sending-interval", type=int, default=10,
                        help="processing ranks send every Nth hit frame (default 10)")
    parser.add_argument("--synthetic", action="store_true", help="simulated frames, not real")
    parser.add_argument("--frozen-subscriber", action="store_true",
                        help="also connect a subscriber that never reads (a frozen GUI)")
    parser.add_argument("--frame-queue-size", type=int, default=None,
                        help="frames queued per processing rank (default: monitor.yaml's)")
    parser.add_argument("--rss-every", type=float, default=0.0, metavar="S",
                        help="also sample every rank's RSS every S seconds (0: peak RSS only)")
    parser.add_argument("--assembly-thread", action="store_true",
                        help="assemble frames in a thread of the collecting rank "
                        "(frame_assembly_process: false) instead of a process of their own")
    arguments = parser.parse_args()
    report(run(rate=arguments.rate, duration=arguments.duration, ranks=arguments.ranks,
               hit_frame_sending_interval=arguments.hit_frame_sending_interval,
               synthetic=arguments.synthetic, frame_queue_size=arguments.frame_queue_size,
               frozen_subscriber=arguments.frozen_subscriber, rss_every=arguments.rss_every,
               assembly_process=not arguments.assembly_thread))


if __name__ == "__main__":
    main()
