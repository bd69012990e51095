# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for tests that run the monitor as a real ``mpiexec`` job on 127.0.0.1."""

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import zmq

from om.lib.serialization import unpack
from om.simulation.configuration import write_monitor_configuration

BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mpiexec() -> str:
    """The mpiexec of this environment (the mpich wheel puts it beside python)."""
    path = BIN / "mpiexec"
    return str(path) if path.exists() else "mpiexec"


class Process:
    """A subprocess whose output goes to files, stopped with SIGINT then killed if needed."""

    def __init__(self, command: list[str], log_dir: pathlib.Path, name: str) -> None:
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(command, stdout=out, stderr=err, env=env)

    def stop(self, timeout: float = 20.0, signum: int = signal.SIGINT) -> int:
        """Sends ``signum``, waits up to ``timeout`` s, then kills; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
            raise AssertionError(f"{self.popen.args[:3]} did not stop within {timeout} s")

    def wait(self, timeout: float) -> int:
        """Waits up to ``timeout`` s for the process to end by itself; returns the exit code."""
        return self.popen.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def monitor_command(source: str, config: pathlib.Path, ranks: int = 3) -> list[str]:
    """``mpiexec -n ranks om_monitor.py source -c config``."""
    return [mpiexec(), "-n", str(ranks), str(BIN / "om_monitor.py"), source, "-c", str(config)]


def simulator_command(urls: str, *arguments: str) -> list[str]:
    """``om_jungfrau_zmq_simulator.py --urls urls ...``."""
    return [str(BIN / "om_jungfrau_zmq_simulator.py"), "--urls", urls, *arguments]


def simulator_mode_command(mode: str, *arguments: str) -> list[str]:
    """``om_simulator.py mode ...``: the simulator in one of its modes (one per format)."""
    return [str(BIN / "om_simulator.py"), mode, *arguments]


@contextlib.contextmanager
def subscriber(url: str, tag: bytes) -> Iterator[zmq.Socket]:
    """A SUB socket connected to ``url`` for ``tag``."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, tag)
    sock.connect(url)
    try:
        yield sock
    finally:
        sock.close(0)


def receive_until(sock: zmq.Socket, condition: Callable[[dict[str, Any]], bool],
                  timeout: float, alive: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """Receives ``[tag, msgpack]`` messages until one satisfies ``condition``.

    Raises:
        AssertionError: after ``timeout`` s, or when ``alive()`` turns false, with the last
            message's counters.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline and alive():
        if sock.poll(200):
            parts = sock.recv_multipart()
            last = unpack(parts[1])
            if condition(last):
                return last
    raise AssertionError(
        f"no matching message within {timeout} s; last: "
        f"{ {k: v for k, v in last.items() if isinstance(v, (int, float, str, dict))} }"
    )


def configure(tmp_path: pathlib.Path, geometry: pathlib.Path, darks: list[str], gains: list[str],
              frame_queue_size: int = 2, **crystallography: Any) -> tuple[pathlib.Path, str]:
    """Writes a monitor.yaml (the packaged example, whose peakfinder8 settings suit the real
    frames) for the given geometry and calibration; returns (path, broadcast URL)."""
    broadcast = f"tcp://127.0.0.1:{free_port()}"
    config = write_monitor_configuration(tmp_path / "monitor.yaml", {
        "data_retrieval_layer": {"detector_dark_filenames": darks,
                                 "detector_gain_filenames": gains,
                                 "detector_photon_energy_kev": 12.4,
                                 "frame_queue_size": frame_queue_size},
        "crystallography": {"geometry_file": str(geometry), "data_broadcast_url": broadcast,
                            "responding_url": None, "data_broadcast_interval": 5,
                            "speed_report_interval": 10, **crystallography},
    })
    return config, broadcast


SINGLE_PANEL_GEOMETRY = """\
; one 512x512 panel of 75 um pixels, the beam at its centre
photon_energy = 12400
clen = 0.100
res = 13333.3333
adu_per_photon = 1
data = {data_path}
dim0 = %
dim1 = ss
dim2 = fs

p0/min_fs = 0
p0/max_fs = 511
p0/min_ss = 0
p0/max_ss = 511
p0/corner_x = -256
p0/corner_y = -256
p0/fs = +1.0x
p0/ss = +1.0y
"""

SPOT_PEAKFINDER8 = {"adc_threshold": 50.0, "minimum_snr": 6.0, "min_pixel_count": 2,
                    "max_pixel_count": 50, "local_bg_radius": 3, "min_res": 20, "max_res": 250,
                    "max_num_peaks": 2048, "bad_pixel_map_filename": None,
                    "bad_pixel_map_hdf5_path": None}
"""peakfinder8 settings that find the synthetic Gaussian spots of the stream senders."""


def configure_single_panel(tmp_path: pathlib.Path, data_retrieval_class: str,
                           data_retrieval: dict[str, Any], crystallography: dict[str, Any],
                           peakfinder8: dict[str, Any] | None = None,
                           data_path: str = "/data/data") -> tuple[pathlib.Path, str,
                                                                   pathlib.Path]:
    """Writes a one-panel 512x512 geometry and a monitor.yaml for ``data_retrieval_class``
    with its whole ``data_retrieval_layer`` group; returns (config, broadcast URL, geometry)."""
    geometry = tmp_path / "panel512.geom"
    geometry.write_text(SINGLE_PANEL_GEOMETRY.format(data_path=data_path))
    broadcast = f"tcp://127.0.0.1:{free_port()}"
    replace = {"data_retrieval_layer": data_retrieval}
    if peakfinder8 is not None:
        replace["peakfinder8_peak_detection"] = peakfinder8
    config = write_monitor_configuration(tmp_path / "monitor.yaml", {
        "om": {"data_retrieval_layer": data_retrieval_class},
        "crystallography": {"geometry_file": str(geometry), "data_broadcast_url": broadcast,
                            "responding_url": None, **crystallography},
    }, replace_groups=replace)
    return config, broadcast, geometry
