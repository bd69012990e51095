# SPDX-License-Identifier: GPL-3.0-or-later
"""Soak test with faults: the supervised monitor on a JUNGFRAU 1M stream for a given time.

Run: ``python benchmarks/soak.py --duration 3600 --rate 300 --fault-every 180``.
A sender in this process streams the real module frames of ../shared/data as both modules of a
1M (slsReceiver's format, on two PUB sockets) at ``--rate`` frames/s to ``om_monitor.py -n
RANKS``, and injects, one every ``--fault-every`` s, in turn:

* ``processing rank killed``: SIGKILL to a processing rank (skipped when only one is left);
* ``sender restarted``: the sender closes its sockets, binds them again and counts frame
  numbers from 1 (a restarted detector);
* ``module silent``: module 1 sends nothing for 40 frames (module 0 goes on);
* ``malformed messages``: a non-JSON header, a header without frameNumber and an image of the
  wrong size on each stream.

Meanwhile GUIs come and go: every 20 s a slow subscriber (one message a second) and a frozen
one (subscribed to everything, never reading) connect for 10 s. A subscriber on ``omdata``
follows the counts. At the end the sender stops; once every frame sent is processed or counted
lost (or after 60 s of silence) the monitor is stopped with SIGINT. Prints frames offered,
processed, each counted loss by kind, the losses no counted fault explains (must be 0), the
faults injected, the MPI job's restarts and the ranks' RSS at the start and at the end.
"""

import argparse
import collections
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import psutil
import zmq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from common import GEOMETRY_1M, REAL_MODULE_FILE, HelpFormatter, need_real_data  # noqa: E402
from helpers import BIN, free_port  # noqa: E402

from om.lib.serialization import unpack  # noqa: E402
from om.parallelization_layer.rank_guard import RANK_PROCESS  # noqa: E402
from om.simulation.configuration import write_monitor_configuration  # noqa: E402
from om.simulation.frame_sources import HDF5FrameSource  # noqa: E402
from om.simulation.jungfrau_stream import JungfrauStreamSender  # noqa: E402

FAULTS = ("processing rank killed", "sender restarted", "module silent", "malformed messages")
SILENT_FRAMES = 40
# Problem kinds that are frames lost (each counts frames); every other kind counts messages.
FRAME_LOSSES = ("incomplete_frame", "frame_dropped_ranks_busy", "frames_lost_with_rank",
                "results_lost_with_rank", "frame_dropped_at_stop")
_GUI_PERIOD, _GUI_STAY = 20.0, 10.0


class FaultySender:
    """Streams 1M frames at a rate in a thread; injects the sender's faults on request.

    Args:
        urls: the two module streams' URLs.
        frames: uint16 (n, 1024, 1024) frames, cycled.
        rate: frames per second.
    """

    def __init__(self, urls: list[str], frames: np.ndarray, rate: float) -> None:
        self._urls, self._frames, self._rate = urls, frames, rate
        self._sender = JungfrauStreamSender(urls)
        self._requests: collections.deque[str] = collections.deque()
        self._stop = threading.Event()
        self.offered = 0  # frames started (one or both modules sent)
        self.silent_frames = 0
        self.injected: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._sender.wait_for_subscribers(600)
        self._thread.start()

    def inject(self, fault: str) -> None:
        """Asks the sending thread for ``fault`` (one of the sender's faults)."""
        self._requests.append(fault)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._sender.send_end_of_acquisition()
        self._sender.close()

    def _run(self) -> None:
        number, silent_left, started, index = 1, 0, time.monotonic(), 0
        while not self._stop.is_set():
            delay = started + index / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            index += 1
            if self._requests:
                fault = self._requests.popleft()
                self.injected[fault] += 1
                if fault == "sender restarted":
                    self._sender.close()
                    self._sender = JungfrauStreamSender(self._urls)
                    self._sender.wait_for_subscribers(120)
                    number, started, index = 1, time.monotonic(), 0
                    continue
                if fault == "module silent":
                    silent_left = SILENT_FRAMES
                elif fault == "malformed messages":
                    self._send_malformed(number)
            frame = self._frames[index % len(self._frames)]
            ticks = int((time.monotonic() - started) * 10_000_000)
            if silent_left:
                silent_left -= 1
                self.silent_frames += 1
                self._send_module(0, frame, number, ticks)
            else:
                self._sender.send_frame(frame, number, ticks)
            self.offered += 1
            number += 1

    def _send_module(self, module: int, frame: np.ndarray, number: int, ticks: int) -> None:
        self._sender.send_module(module, frame, number, ticks)

    def _send_malformed(self, number: int) -> None:
        for module in range(self._sender.modules):
            header = self._sender.header(module, number, 0, None)
            self._sender.send_parts(module, [b"\xff not json", b"\0" * 16])
            self._sender.send_parts(module, [json.dumps({**header, "frameNumber": None}).encode(),
                                             b"\0"])
            self._sender.send_parts(module, [json.dumps(header).encode(), b"\0" * 100])


def _rank_processes(supervisor: psutil.Process) -> dict[Any, psutil.Process]:
    """The ranks' processes (not their guards) and the frame assembler process."""
    found: dict[Any, psutil.Process] = {}
    for child in supervisor.children(recursive=True):
        try:
            environment = child.environ()
            if RANK_PROCESS in environment and "PMI_RANK" in environment:
                found[int(environment["PMI_RANK"])] = child
            elif "frame_assembler_process" in " ".join(child.cmdline()):
                found["assembler"] = child
        except psutil.Error:
            continue
    return found


def _rss_mb(processes: dict[Any, psutil.Process]) -> dict[str, float]:
    sizes = {}
    for name, process in processes.items():
        try:
            sizes[str(name)] = process.memory_info().rss / 1e6
        except psutil.Error:
            pass
    return sizes


class GuiChurn:
    """Slow and frozen subscribers that connect for a while, then leave."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._sockets: list[zmq.Socket] = []
        self._since = 0.0
        self._next_read = 0.0
        self.visits = 0

    def step(self, now: float) -> None:
        if not self._sockets and now - self._since >= _GUI_PERIOD:
            slow = zmq.Context.instance().socket(zmq.SUB)
            slow.setsockopt(zmq.SUBSCRIBE, b"")
            slow.setsockopt(zmq.RCVHWM, 2)
            frozen = zmq.Context.instance().socket(zmq.SUB)
            frozen.setsockopt(zmq.SUBSCRIBE, b"")
            frozen.setsockopt(zmq.RCVHWM, 1)
            for socket in (slow, frozen):
                socket.setsockopt(zmq.LINGER, 0)
                socket.connect(self._url)
            self._sockets, self._since = [slow, frozen], now
            self.visits += 1
        elif self._sockets and now - self._since >= _GUI_STAY:
            for socket in self._sockets:
                socket.close(0)
            self._sockets, self._since = [], now
        elif self._sockets and now >= self._next_read:  # the slow one: a message a second
            self._next_read = now + 1.0
            try:
                self._sockets[0].recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass

    def close(self) -> None:
        for socket in self._sockets:
            socket.close(0)


def run(*, duration: float, rate: float, ranks: int, fault_every: float,
        frame_queue_size: int) -> dict[str, Any]:
    """Runs the soak; returns its figures (see the module doc)."""
    need_real_data()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="om_soak_"))
    source = HDF5FrameSource(str(REAL_MODULE_FILE))
    darks, gains = source.write_calibration(folder / "calibration")
    frames = np.stack([source.frame(index) for index in range(len(source))])
    broadcast = f"tcp://127.0.0.1:{free_port()}"
    config = write_monitor_configuration(folder / "monitor.yaml", {
        "data_retrieval_layer": {"detector_dark_filenames": darks,
                                 "detector_gain_filenames": gains,
                                 "frame_queue_size": frame_queue_size},
        "crystallography": {"geometry_file": str(GEOMETRY_1M), "data_broadcast_url": broadcast,
                            "responding_url": None, "speed_report_interval": 10000},
    })
    urls = [f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"]
    sender = FaultySender(urls, frames, rate)
    log = open(folder / "monitor.log", "w")
    monitor = subprocess.Popen([str(BIN / "om_monitor.py"), "-n", str(ranks), ",".join(urls),
                                "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    supervisor = psutil.Process(monitor.pid)
    omdata = zmq.Context.instance().socket(zmq.SUB)
    omdata.setsockopt(zmq.SUBSCRIBE, b"omdata")
    omdata.connect(broadcast)
    guis = GuiChurn(broadcast)
    last_by_job: dict[int, dict[str, Any]] = {}
    kills = collections.Counter()

    def take_omdata(timeout_ms: int) -> bool:
        if not omdata.poll(timeout_ms):
            return False
        message = unpack(omdata.recv_multipart()[1])
        last_by_job[int(message.get("monitor_restarts", 0))] = message
        return True

    print(f"soak: waiting for the monitor (log: {folder / 'monitor.log'})", flush=True)
    sender.start()
    started = time.monotonic()
    rss_start: dict[str, float] = {}
    next_fault, fault_index, next_progress = started + fault_every, 0, started + 60
    while time.monotonic() - started < duration and monitor.poll() is None:
        take_omdata(100)
        now = time.monotonic()
        guis.step(now)
        # After the start-up (compilation, first frames), before the first fault.
        if not rss_start and (now - started > 30 or now >= next_fault):
            rss_start = _rss_mb(_rank_processes(supervisor))
        if now >= next_fault:
            fault = FAULTS[fault_index % len(FAULTS)]
            fault_index += 1
            next_fault += fault_every
            if fault == "processing rank killed":
                processing = {rank: process for rank, process in
                              _rank_processes(supervisor).items() if rank not in (0, "assembler")}
                if len(processing) >= 2:
                    rank = sorted(processing)[-1]
                    processing[rank].send_signal(signal.SIGKILL)
                    kills["done"] += 1
                    print(f"  {now - started:.0f} s: processing rank {rank} killed", flush=True)
                else:
                    kills["skipped (one processing rank left)"] += 1
            else:
                sender.inject(fault)
                print(f"  {now - started:.0f} s: {fault}", flush=True)
        if now >= next_progress:
            next_progress += 60
            last = last_by_job.get(max(last_by_job), {}) if last_by_job else {}
            print(f"  {now - started:.0f} s: offered {sender.offered}, processed "
                  f"{last.get('num_events', 0)} (job {max(last_by_job, default=0)})", flush=True)
    rss_end = _rss_mb(_rank_processes(supervisor))
    sender.stop()
    guis.close()
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 60 and monitor.poll() is None:
        if take_omdata(200):
            quiet_since = time.monotonic()
        last = last_by_job[max(last_by_job)] if last_by_job else {}
        if len(last_by_job) == 1 and _accounted(last) >= sender.offered:
            break
    monitor.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while monitor.poll() is None and time.monotonic() < deadline:
        take_omdata(100)
    if monitor.poll() is None:
        monitor.kill()
    monitor.wait(30)
    omdata.close(0)
    log.close()
    shutil.rmtree(folder / "calibration", ignore_errors=True)
    return {"duration": duration, "rate": rate, "ranks": ranks, "fault_every": fault_every,
            "offered": sender.offered, "silent_frames": sender.silent_frames,
            "injected": dict(sender.injected), "kills": dict(kills), "jobs": last_by_job,
            "gui_visits": guis.visits, "rss_start": rss_start, "rss_end": rss_end,
            "exit_code": monitor.returncode, "log": str(folder / "monitor.log")}


def _accounted(omdata: dict[str, Any]) -> int:
    problems = omdata.get("problems", {})
    return omdata.get("num_events", 0) + sum(problems.get(kind, 0) for kind in FRAME_LOSSES)


def report(figures: dict[str, Any]) -> None:
    """Prints the soak's table."""
    jobs = figures["jobs"]
    processed = sum(job.get("num_events", 0) for job in jobs.values())
    losses: collections.Counter[str] = collections.Counter()
    others: collections.Counter[str] = collections.Counter()
    lost_ranks = {}
    for job in jobs.values():
        for kind, count in job.get("problems", {}).items():
            (losses if kind in FRAME_LOSSES else others)[kind] += count
        lost_ranks.update(job.get("processing_ranks_lost", {}))
    unexplained = figures["offered"] - processed - sum(losses.values())
    print(f"soak: {figures['duration']:.0f} s at {figures['rate']:.0f} frames/s, om_monitor.py "
          f"-n {figures['ranks']}, a fault every {figures['fault_every']:.0f} s")
    print(f"  frames offered                        {figures['offered']:>9}  "
          f"({figures['silent_frames']} with module 1 silent)")
    print(f"  frames processed                      {processed:>9}")
    for kind in FRAME_LOSSES:
        print(f"  lost, counted as {kind:<24} {losses.get(kind, 0):>6}")
    print(f"  lost, not explained by a counted fault {unexplained:>8}  (must be 0)")
    print("  other problems counted (messages, not frames): "
          + (", ".join(f"{kind} {count}" for kind, count in sorted(others.items())) or "none"))
    injected = dict(figures["injected"])
    injected["processing rank killed"] = figures["kills"].get("done", 0)
    print("  faults injected: " + ", ".join(f"{fault} {injected.get(fault, 0)}"
                                            for fault in FAULTS)
          + "".join(f" ({count} kills {why})" for why, count in figures["kills"].items()
                    if why != "done")
          + f"; GUI visits (a slow and a frozen subscriber) {figures['gui_visits']}")
    print(f"  processing ranks lost (omdata): {lost_ranks or 'none'}")
    print(f"  restarts of the MPI job: {max(jobs, default=0)}; monitor exit code "
          f"{figures['exit_code']}")
    for moment in ("start", "end"):
        sizes = figures[f"rss_{moment}"]
        print(f"  RSS at the {moment}: " + ", ".join(f"{name} {mb:.0f} MB"
                                                  for name, mb in sorted(sizes.items()))
              + f"; total {sum(sizes.values()):.0f} MB")
    print(f"  monitor log: {figures['log']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of sending")
    parser.add_argument("--rate", type=float, default=300.0, help="frames per second")
    parser.add_argument("--ranks", type=int, default=4, help="MPI ranks (1 collecting)")
    parser.add_argument("--fault-every", type=float, default=180.0,
                        help="seconds between two faults")
    parser.add_argument("--frame-queue-size", type=int, default=2,
                        help="frames each processing rank holds at most, besides the one it "
                        "processes (data_retrieval_layer/frame_queue_size)")
    arguments = parser.parse_args()
    report(run(duration=arguments.duration, rate=arguments.rate, ranks=arguments.ranks,
               fault_every=arguments.fault_every, frame_queue_size=arguments.frame_queue_size))


if __name__ == "__main__":
    main()
