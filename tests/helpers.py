# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for the tests: the monitor as a real ``mpiexec`` job on 127.0.0.1, its configuration,
and what the tests of the stream sources and their documentation share."""

import contextlib
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import zmq

from om.data_retrieval_layer.file_lease import LOCAL_FILE_SYSTEMS, file_system_type
from om.lib.exceptions import OmConfigurationError
from om.lib.parameters import MonitorParameters
from om.lib.problems import problems
from om.lib.serialization import unpack
from om.simulation.configuration import SPOT_PEAKFINDER8, write_monitor_configuration

BIN = pathlib.Path(sys.executable).parent
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def _ephemeral_ports_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, below the kernel's ephemeral range: ports of that
    range are also handed to outgoing connections (ZeroMQ's attempts to reconnect to a stream
    that is not there yet take a new one every 0.1 s), one of which could take the port before
    the monitor binds it."""
    start = _ephemeral_ports_start()
    for _ in range(100):
        port = random.randrange(max(1024, start - 12000), start)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def skip_unless_leases_are_taken(folder: pathlib.Path) -> None:
    """Skips the test when ``folder`` is on a file system where no read lease is taken
    (``om.data_retrieval_layer.file_lease``): images are copied there, never mapped."""
    import pytest  # here: the benchmarks import this module without pytest

    kind = file_system_type(os.stat(folder).st_dev)
    if kind not in LOCAL_FILE_SYSTEMS:
        pytest.skip(f"the test folder is on a {kind!r} file system, where no lease is taken")


def mapped_regions(path: pathlib.Path) -> int:
    """How many regions of this process's memory map ``path`` (``/proc/self/maps``)."""
    with open("/proc/self/maps") as maps:
        return sum(str(path) in line for line in maps)


@contextlib.contextmanager
def process_holding_open_for_writing(path: pathlib.Path, mode: str = "ab") -> Iterator[None]:
    """Runs the block while a child process has ``path`` open for writing (``mode``); the
    child is gone when the block ends."""
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import sys; f = open(sys.argv[1], {mode!r}); print('open', "
         "flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "open\n"
        yield
    finally:
        writer.communicate(timeout=20)


def mpiexec() -> str:
    """The mpiexec of this environment (the mpich wheel puts it beside python)."""
    path = BIN / "mpiexec"
    return str(path) if path.exists() else "mpiexec"


class Process:
    """A subprocess whose output goes to files, stopped with SIGINT then killed if needed."""

    def __init__(self, command: list[str], log_dir: pathlib.Path, name: str,
                 env: dict[str, str] | None = None) -> None:
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
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


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` s, looking every 10 ms (for states that
    change asynchronously and give nothing to wait on, e.g. subscriptions reaching an XPUB
    socket, or a producer thread filling its queue)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


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
              frame_queue_size: int = 2, frame_shared_memory: bool = True,
              **crystallography: Any) -> tuple[pathlib.Path, str]:
    """Writes a monitor.yaml (the packaged example, whose peakfinder8 settings suit the real
    frames) for the given geometry and calibration; returns (path, broadcast URL)."""
    broadcast = f"tcp://127.0.0.1:{free_port()}"
    config = write_monitor_configuration(tmp_path / "monitor.yaml", {
        "data_retrieval_layer": {"detector_dark_filenames": darks,
                                 "detector_gain_filenames": gains,
                                 "detector_photon_energy_kev": 12.4,
                                 "frame_queue_size": frame_queue_size,
                                 "frame_shared_memory": frame_shared_memory},
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


# Stream sources (DECTRIS Stream V2, streaming-receiver): one PUSH URL pulled by every rank ------

FALLBACK_EV, FALLBACK_MM = 9000.0, 250.0
"""The configured fallback beam energy (eV) and detector distance (mm) of the stream tests."""


def configure_stream(tmp_path: pathlib.Path, data_retrieval_class: str,
                     data_retrieval: dict[str, Any] | None = None,
                     **crystallography: Any) -> tuple[pathlib.Path, str]:
    """Writes a monitor.yaml for a stream ``data_retrieval_class`` with the fallbacks above,
    the 512x512 geometry and peakfinder8 settings that find the senders' spots; returns
    (path, broadcast URL)."""
    path, broadcast, _ = configure_single_panel(
        tmp_path, data_retrieval_class,
        {"fallback_beam_energy_in_eV": FALLBACK_EV, "fallback_detector_distance_in_mm": FALLBACK_MM,
         "stream_queue_size": 16, **(data_retrieval or {})},
        {"data_broadcast_interval": 4, "min_num_peaks_for_hit": 5, "speed_report_interval": 100,
         "crystfel_frames": "none", **crystallography},
        peakfinder8=SPOT_PEAKFINDER8)
    return path, broadcast


def monitor_parameters(config: pathlib.Path, data_retrieval_class: type) -> MonitorParameters:
    """The configuration at ``config``, validated as ``om_monitor.py`` does for
    ``data_retrieval_class`` and the crystallography processing."""
    from om.monitor import OM_GROUP
    from om.processing_layer.crystallography import CrystallographyProcessing

    parameters = MonitorParameters(config)
    parameters.validate([OM_GROUP, *data_retrieval_class.parameter_groups,
                         *CrystallographyProcessing.parameter_groups])
    return parameters


def counts_during(action: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Runs ``action``; returns its result and the problems it counted, by kind."""
    before = problems.counts()
    result = action()
    after = problems.counts()
    return result, {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def extract_messages(handler: Any, messages: list[Any],
                     received_time: float = 123.0) -> list[dict[str, Any]]:
    """Runs messages through the message handling of processing rank 1 of 2 and through the
    Data Sources of a pull-stream ``handler`` (initialized here, no socket); returns the data
    of each image, with the decoded image under ``image``."""
    for source in handler._data_sources.values():
        source.initialize_data_source()
    state = handler.make_message_handler(node_rank=1, node_pool_size=2)
    data = []
    for message in messages:
        event = state.handle(message, received_time)
        if event is not None:
            data.append(handler.extract_data(event=event) | {"image": event["image"]})
    return data


def receive_sent_events(handler: Any, sender: Any, count: int,
                        send: Callable[[], None]) -> list[tuple[Any, dict[str, Any]]]:
    """Connects ``handler`` as processing rank 1 of 2 to ``sender``, calls ``send`` once the
    rank is connected and returns (decoded image, extracted data) of the first ``count`` events.
    Stops the handler and closes the sender in any case."""
    handler.initialize_event_handling_on_processing_node(node_rank=1, node_pool_size=2)
    watchdog = threading.Timer(60, handler.stop)  # bounds the test if an image never comes
    watchdog.start()
    received = []
    try:
        assert sender.wait_for_clients(1, 30)
        send()
        for event in handler.event_generator(node_rank=1, node_pool_size=2):
            received.append((event["image"], handler.extract_data(event=event)))
            handler.close_event(event=event)
            if len(received) == count:
                break
    finally:
        watchdog.cancel()
        handler.stop()
        sender.close()
    return received


def assert_one_zeromq_url_source(data_retrieval_class: type, parameters: MonitorParameters,
                                 source: str, event_id: str, unreachable: str) -> None:
    """Checks a pull-stream set-up: ``source`` (padded with blanks) is accepted, the first rank
    collects, single events cannot be retrieved, anything but one ZeroMQ URL is refused, and an
    unreachable host stops the processing rank's start with ``unreachable`` in the message."""
    import pytest  # here: the benchmarks import this module without pytest

    handler = data_retrieval_class(parameters=parameters,
                                   source=f" {source} ").get_data_event_handler()
    assert handler.designated_collector_rank() == "first" and handler.skip_rank_finalization()
    assert handler.initialize_event_handling_on_collecting_node(node_rank=0,
                                                                node_pool_size=3) is None
    with pytest.raises(NotImplementedError):
        handler.retrieve_event_data(event_id)
    for bad in (source.replace("tcp://", "http://"), "tcp://a:1,tcp://b:2"):
        with pytest.raises(OmConfigurationError, match="one ZeroMQ URL"):
            data_retrieval_class(parameters=parameters, source=bad)
    handler = data_retrieval_class(parameters=parameters,
                                   source="tcp://not a host:1").get_data_event_handler()
    with pytest.raises(OmConfigurationError, match=unreachable):
        handler.initialize_event_handling_on_processing_node(node_rank=1, node_pool_size=2)


def run_sender_main(main: Callable[[list[str]], int], arguments: list[str],
                    count: int) -> tuple[int | None, list[list[bytes]]]:
    """Runs a sender's ``main(["--url", URL, *arguments])`` in a thread with a PULL client in
    this process; returns its exit code (None if it did not end) and the first ``count``
    messages, as lists of parts."""
    port = free_port()
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(f"tcp://127.0.0.1:{port}")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", main(
        ["--url", f"tcp://127.0.0.1:{port}", *arguments])))
    thread.start()
    messages = []
    deadline = time.monotonic() + 60
    while len(messages) < count and time.monotonic() < deadline:
        if pull.poll(200):
            messages.append(pull.recv_multipart())
    thread.join(30)
    pull.close(0)
    return result.get("code"), messages


def wait_for_processing_ranks(sender: Any, monitor: Process, timeout: float = 180) -> None:
    """Waits until both processing ranks of ``monitor`` are connected to ``sender``.

    Raises:
        AssertionError: when the monitor ends or ``timeout`` s pass first, with its stderr.
    """
    deadline = time.monotonic() + timeout
    while not sender.wait_for_clients(2, 1):
        assert monitor.popen.poll() is None and time.monotonic() < deadline, \
            monitor.stderr[-3000:]


# Documentation --------------------------------------------------------------------------------

def problem_kinds(*modules: ModuleType) -> set[str]:
    """The problem kinds ``modules`` declare: their public upper-case constants whose value is
    a lower-case snake_case word."""
    return {value for module in modules for name, value in vars(module).items()
            if name.isupper() and name[0] != "_" and isinstance(value, str)
            and re.fullmatch(r"[a-z_]+", value)}


def assert_source_documented(source_doc: str, data_retrieval_class: type,
                             kinds: set[str]) -> None:
    """Checks that docs/``source_doc`` has a row for every configuration key of
    ``data_retrieval_class`` and that it and docs/broadcast.md have one for every kind."""
    source_text = (DOCS / source_doc).read_text()
    broadcast_text = (DOCS / "broadcast.md").read_text()
    for group in data_retrieval_class.parameter_groups:
        for parameter in group.parameters:
            assert f"| `{parameter.name}` |" in source_text, parameter.name
    for kind in kinds:
        assert f"| `{kind}` |" in broadcast_text, kind
        assert f"| `{kind}` |" in source_text, kind


def assert_damaged_messages_are_dropped(state: Any, messages: list[Any],
                                        damage: Callable[[Any, int, Any], Any], seed: int,
                                        max_pixels: int, trials: int = 600) -> None:
    """Feeds ``state`` (a stream decoder) ``trials`` messages, each one of ``messages`` damaged
    by ``damage(message, trial, rng)``; checks that each gives a plausible image or is dropped
    and counted as a problem, and that nothing raises."""
    rng = np.random.default_rng(seed)
    before = sum(problems.counts().values())
    for trial in range(trials):
        event = state.handle(damage(messages[trial % len(messages)], trial, rng), 0.0)
        if event is not None:
            assert event["image"].ndim == 2 and event["image"].size <= max_pixels
    assert state.counts["dropped"] > 100
    assert sum(problems.counts().values()) - before >= state.counts["dropped"]


def run_monitor_on_simulator(tmp_path: pathlib.Path, config: pathlib.Path, broadcast: str,
                             mode: str, frames: int,
                             *arguments: str) -> tuple[dict[str, Any], list[dict[str, Any]],
                                                       Process]:
    """Runs ``om_simulator.py mode --url URL --frames frames ...`` and the monitor (3 ranks)
    on URL until omdata counts ``frames`` events; checks that both exit with 0 and returns
    (that omdata message, the omframedata messages received by then, the monitor)."""
    url = f"tcp://127.0.0.1:{free_port()}"
    return run_monitor_with_sender(
        tmp_path, config, broadcast,
        simulator_mode_command(mode, "--url", url, "--frames", str(frames), *arguments), url,
        frames)


def run_monitor_with_sender(tmp_path: pathlib.Path, config: pathlib.Path, broadcast: str,
                            sender_command: list[str], source: str,
                            frames: int) -> tuple[dict[str, Any], list[dict[str, Any]], Process]:
    """Runs ``sender_command`` (which sends ``frames`` frames and ends) and the monitor (3
    ranks) on ``source`` until omdata counts ``frames`` events; checks that both exit with 0
    and returns (that omdata message, the omframedata messages received by then, the
    monitor)."""
    sender = Process(sender_command, tmp_path, "sender")
    monitor = Process(monitor_command(source, config), tmp_path, "monitor")
    frames_seen = []
    try:
        with subscriber(broadcast, b"omdata") as omdata, \
                subscriber(broadcast, b"omframedata") as omframedata:
            alive = lambda: monitor.popen.poll() is None
            frames_seen.append(receive_until(omframedata, lambda m: True, 180, alive))
            data = receive_until(omdata, lambda m: m["num_events"] >= frames, 60, alive)
            while omframedata.poll(0):
                frames_seen.append(receive_until(omframedata, lambda m: True, 1))
        assert sender.wait(60) == 0
    finally:
        code = monitor.stop()
        sender.stop()
    print(sender.stdout, sender.stderr, monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    return data, frames_seen, monitor


def run_monitor_on_sent(tmp_path: pathlib.Path, config: pathlib.Path, broadcast: str,
                        sender: Any, send: Callable[[], None],
                        until: Callable[[dict[str, Any]], bool]) -> tuple[dict[str, Any],
                                                                          Process]:
    """Runs the monitor (3 ranks) on ``sender``'s URL, calls ``send`` once both processing
    ranks are connected, and stops the monitor with SIGTERM at the first omdata message that
    satisfies ``until``; checks that it exits with 0 and returns (that message, the monitor).
    Closes the sender in any case."""
    monitor = Process(monitor_command(sender.url, config), tmp_path, "monitor")
    try:
        with subscriber(broadcast, b"omdata") as omdata:
            wait_for_processing_ranks(sender, monitor)
            send()
            data = receive_until(omdata, until, 60, lambda: monitor.popen.poll() is None)
    finally:
        code = monitor.stop(signum=signal.SIGTERM)
        sender.close()
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    return data, monitor


def reported_lines(stderr: str, kinds: Iterable[str]) -> list[str]:
    """The lines of ``stderr`` reporting ``kinds``; checks that each kind has one or two (one
    per processing rank: the reports are rate-limited)."""
    found = []
    for kind in kinds:
        lines = [line for line in stderr.splitlines() if f"{kind}: " in line]
        assert 1 <= len(lines) <= 2, (kind, lines)
        found += lines
    return found


@contextlib.contextmanager
def small_disk(folder: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """Mounts a tmpfs of ``size`` (e.g. ``"8m"``) at ``folder`` (created) for the block: a disk
    that fills up. Skips the test with the reason when mounting is not permitted (not root)."""
    import pytest  # here: the benchmarks import this module without pytest

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def follow_mode_handler(tmp_path: pathlib.Path, writer_dir: pathlib.Path):
    """A files source's Data Event Handler in follow mode, as processing rank 1 of 2, watching
    ``writer_dir`` through notifications from a PUB socket bound on 127.0.0.1.

    Returns:
        ``(handler, publisher)``: the initialized handler and the bound PUB socket (the caller
        closes both).
    """
    import zmq

    from om.data_retrieval_layer.data_retrieval_files import Hdf5FilesDataRetrieval
    from om.lib.parameters import MonitorParameters

    config, _, _ = configure_single_panel(
        tmp_path, "Hdf5FilesDataRetrieval",
        {"fallback_beam_energy_in_eV": 9000.0, "fallback_detector_distance_in_mm": 250.0,
         "files_follow_directory": str(writer_dir), "files_read_ahead": 0},
        {"data_broadcast_interval": 1}, data_path="/entry/data/data")
    parameters = MonitorParameters(config)
    parameters.validate(Hdf5FilesDataRetrieval.parameter_groups, complete=False)
    url = f"tcp://127.0.0.1:{free_port()}"
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.bind(url)
    handler = Hdf5FilesDataRetrieval(parameters=parameters, source=url).get_data_event_handler()
    handler.initialize_event_handling_on_processing_node(
        node_rank=1, node_pool_size=2, collecting_node_info={"files": []})
    return handler, publisher
