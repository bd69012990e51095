# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_demo.py``: the monitor on a simulated JUNGFRAU 1M, with nothing but this package.

Writes the simulated detector's calibration files and a ``monitor.yaml`` to a folder, starts
``om_jungfrau_zmq_simulator.py`` and ``mpiexec -n N om_monitor.py`` on 127.0.0.1, and, when a
display is present, the crystallography GUI and the frame viewer. Ctrl-C (or ``--duration``)
stops everything; the monitor prints its speed reports and a final summary.

The children run in sessions of their own: a terminal's Ctrl-C reaches the demo alone, which
stops each child once (a second SIGINT makes ``mpiexec`` abort the job with assertion errors
and leave its shared-memory files behind).
"""

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

from om.lib.stop_signals import on_stop_signals
from om.simulation.configuration import write_monitor_configuration
from om.simulation.jungfrau_frames import SyntheticJungfrau

_BIN = pathlib.Path(sys.executable).parent


def _command(script: str, module: str) -> list[str]:
    # The console script when installed, else the module (e.g. from a source checkout).
    path = _BIN / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def _mpiexec() -> str:
    path = _BIN / "mpiexec"
    return str(path) if path.exists() else "mpiexec"


def _display_available() -> bool:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        import pyqtgraph  # noqa: F401
        from PyQt5 import QtWidgets  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``om_demo.py``; returns the monitor's exit code."""
    parser = argparse.ArgumentParser(prog="om_demo.py", description=__doc__)
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (default 0: run until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=20.0, help="simulated frames/s (default 20)")
    parser.add_argument("--ranks", type=int, default=3, help="MPI ranks (default 3)")
    parser.add_argument("--directory", help="where to write the files, kept (default: a "
                        "temporary folder, removed at the end)")
    parser.add_argument("--gui", choices=("auto", "yes", "no"), default="auto",
                        help="start the GUIs (auto: when a display is present)")
    parser.add_argument("--base-port", type=int, default=30001,
                        help="first of the 2 ports of the simulated module streams on "
                        "127.0.0.1 (default 30001)")
    parser.add_argument("--broadcast-port", type=int, default=12321,
                        help="port of the monitor's broadcast on 127.0.0.1, the GUIs' URL; the "
                        "next one answers requests (default 12321, as in monitor.yaml)")
    arguments = parser.parse_args(argv)

    if arguments.directory:
        directory = pathlib.Path(arguments.directory)
        directory.mkdir(parents=True, exist_ok=True)
        return _run(arguments, directory)
    # The calibration files (37 MB) of a temporary folder go when the demo ends.
    with tempfile.TemporaryDirectory(prefix="om_demo_") as temporary:
        return _run(arguments, pathlib.Path(temporary))


def _run(arguments: argparse.Namespace, directory: pathlib.Path) -> int:
    """Writes the files into ``directory``, runs the simulator, the monitor and the GUIs until
    the duration ends, the monitor ends or a stop signal; returns the monitor's exit code."""
    darks, gains = SyntheticJungfrau(seed=0).write_calibration_files(directory / "calibration")
    port = arguments.base_port
    streams = f"tcp://127.0.0.1:{port},tcp://127.0.0.1:{port + 1}"
    broadcast = f"tcp://127.0.0.1:{arguments.broadcast_port}"
    responding = f"tcp://127.0.0.1:{arguments.broadcast_port + 1}"
    config = write_monitor_configuration(directory / "monitor.yaml", {
        "data_retrieval_layer": {"detector_dark_filenames": darks,
                                 "detector_gain_filenames": gains},
        "crystallography": {"data_broadcast_url": broadcast, "responding_url": responding},
    })
    print(f"om_demo: files in {directory}; monitor broadcasting on {broadcast}", flush=True)

    # Sessions of their own: only the demo gets a terminal's Ctrl-C (see the module doc).
    processes = [
        subprocess.Popen([*_command("om_jungfrau_zmq_simulator.py",
                                    "om.simulation.jungfrau_zmq_simulator"),
                          "--urls", streams, "--rate", str(arguments.rate)],
                         start_new_session=True),
        subprocess.Popen([_mpiexec(), "-n", str(arguments.ranks),
                          *_command("om_monitor.py", "om.monitor_launcher"), streams, "-c",
                          str(config)], start_new_session=True),
    ]
    monitor = processes[1]
    guis = [[*_command("om_crystallography_gui.py",
                       "om.graphical_interfaces.crystallography_gui"),
             broadcast, "--responding-url", responding],
            [*_command("om_frame_viewer.py", "om.graphical_interfaces.frame_viewer"), broadcast]]
    if arguments.gui == "yes" or (arguments.gui == "auto" and _display_available()):
        processes.extend(subprocess.Popen(gui, start_new_session=True) for gui in guis)
    else:
        why = "--gui no" if arguments.gui == "no" else "no display (DISPLAY is not set) or no PyQt5"
        print(f"om_demo: GUIs not started ({why}); where a display is, connect them with:\n"
              f"  om_crystallography_gui.py {broadcast} --responding-url {responding}\n"
              f"  om_frame_viewer.py {broadcast}", flush=True)

    interrupted = threading.Event()
    on_stop_signals(interrupted.set)
    # The children are in sessions of their own: a closed terminal reaches only the demo.
    signal.signal(signal.SIGHUP, lambda *_: interrupted.set())
    deadline = time.monotonic() + arguments.duration if arguments.duration > 0 else None
    while not interrupted.is_set() and monitor.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # The monitor first, so that it prints its summary while the simulator still runs.
    for process in [monitor, *[p for p in processes if p is not monitor]]:
        if process.poll() is None:
            process.send_signal(signal.SIGINT if process is monitor else signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return monitor.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
