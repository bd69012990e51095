# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_jungfrau_zmq_simulator.py``: a JUNGFRAU 1M streaming like slsReceiver, for tests and demos.

Binds one stream per module and sends frames at a given rate, for a given number of frames or
until stopped (SIGINT/SIGTERM), then the end-of-acquisition message. Frames come from an HDF5
file (``--file``, e.g. the real module frames of ``jungfrau_module_real.h5`` as both modules)
or, by default, from the simulated detector of :mod:`om.simulation.jungfrau_frames`.
``--write-calibration DIR`` writes the matching calibration files (OM's layout) and exits.
``--dark-stage G0|G1|G2`` sends a dark run of the simulated detector (for ``om_jungfrau_dark.py``).
``--saturated-pixels N`` saturates the N brightest spots' centres (G2, ADC 0) of every
``--saturated-frame-interval``-th frame (default 1: every frame), to watch saturation.
``--write-frames FILE`` writes the frames to an HDF5 file instead of sending them (e.g. dark
runs for ``om_jungfrau_dark.py --file``).
"""

import argparse
import pathlib
import sys
import threading
import time
from typing import Any

from om.lib.stop_signals import on_stop_signals
from om.simulation.frame_sources import (
    FRAME_SHAPE,
    HDF5FrameSource,
    SaturatingFrameSource,
    SyntheticFrameSource,
)
from om.simulation.jungfrau_stream import JungfrauStreamSender
from om.simulation.pacing import paced_indices

DEFAULT_URLS = "tcp://127.0.0.1:30001,tcp://127.0.0.1:30002"
DETECTOR_CLOCK_HZ = 10_000_000


def _parse_arguments(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", default=DEFAULT_URLS,
                        help=f"comma-separated URLs to bind, module 0 first (default {DEFAULT_URLS})")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="frames per second (0: as fast as possible; default 10)")
    parser.add_argument("--frames", type=int, default=0,
                        help="frames to send, then end the acquisition (default 0: until stopped)")
    parser.add_argument("--file", help="HDF5 file of raw frames (default: simulated frames)")
    parser.add_argument("--dataset", default="raw", help="dataset of raw frames (default raw)")
    parser.add_argument("--hit-fraction", type=float, default=0.5,
                        help="fraction of simulated frames with Bragg spots (default 0.5)")
    parser.add_argument("--pool", type=int, default=20,
                        help="distinct simulated frames, cycled (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated detector")
    parser.add_argument("--dark-stage", choices=("G0", "G1", "G2"),
                        help="send a dark run of the simulated detector instead: no photons, "
                        "the gain forced to this stage (see om_jungfrau_dark.py)")
    parser.add_argument("--first-frame-number", type=int, default=1,
                        help="frame number of the first frame sent (default 1)")
    parser.add_argument("--write-frames", metavar="FILE",
                        help="write the frames (--frames of them, default 100) to FILE, dataset "
                        "raw, uint16 (n, 1024, 1024), instead of sending them, and exit")
    parser.add_argument("--wait-for-subscribers", type=float, default=60.0, metavar="S",
                        help="wait up to S s for a subscriber on every stream before sending "
                        "(0: send at once, like a detector; default 60)")
    parser.add_argument("--saturated-pixels", type=int, default=0, metavar="N",
                        help="saturate (G2, ADC 0) the centres of the N brightest spots of the "
                        "chosen frames (default 0: none)")
    parser.add_argument("--saturated-frame-interval", type=int, default=1, metavar="K",
                        help="with --saturated-pixels: saturate every K-th frame, the first "
                        "one included (default 1)")
    parser.add_argument("--write-calibration", metavar="DIR",
                        help="write the calibration files of the frames' detector to DIR and exit")
    return parser.parse_args(argv)


def run(arguments: argparse.Namespace) -> int:
    """Runs the simulator; returns the exit code."""
    dark_stage = None if arguments.dark_stage is None else int(arguments.dark_stage[1])
    if arguments.file and dark_stage is not None:
        print("om_jungfrau_zmq_simulator.py: error: --dark-stage simulates the dark run; it "
              "does not apply to --file", file=sys.stderr)
        return 1
    if arguments.file:
        try:
            source: Any = HDF5FrameSource(arguments.file, arguments.dataset)
        except (OSError, ValueError) as error:
            print(f"om_jungfrau_zmq_simulator.py: error: {error}", file=sys.stderr)
            return 1
    else:
        source = SyntheticFrameSource(pool_size=arguments.pool,
                                      hit_fraction=arguments.hit_fraction, seed=arguments.seed,
                                      dark_stage=dark_stage)
    if arguments.saturated_pixels > 0:
        source = SaturatingFrameSource(source, arguments.saturated_pixels,
                                       arguments.saturated_frame_interval)
    if arguments.write_frames:
        return _write_frames(source, arguments.write_frames, arguments.frames or 100)
    if arguments.write_calibration:
        written = source.write_calibration(pathlib.Path(arguments.write_calibration))
        if written is None:
            print(f"om_jungfrau_zmq_simulator.py: error: {arguments.file} holds no calibration "
                  "(datasets pedestal and gain_adu_per_photon)", file=sys.stderr)
            return 1
        for name in (*written[0], *written[1]):
            print(name)
        return 0

    if arguments.file:  # a calibration matches one detector: the simulated one's does not
        print(f"simulator: sending the frames of {arguments.file}; the monitor needs their own "
              f"calibration: om_simulator.py jungfrau --file {arguments.file} "
              "--write-calibration DIR", flush=True)
    stop = threading.Event()
    on_stop_signals(stop.set)
    urls = [url.strip() for url in arguments.urls.split(",") if url.strip()]
    sender = JungfrauStreamSender(urls)
    if arguments.wait_for_subscribers > 0:
        print(f"simulator: waiting for subscribers on {', '.join(urls)}", flush=True)
        if not sender.wait_for_subscribers(arguments.wait_for_subscribers):
            print("simulator: no subscriber came, sending anyway", flush=True)
    start = time.monotonic()
    sent = 0
    count = arguments.frames if arguments.frames > 0 else None  # 0: until stopped
    for index in paced_indices(count, arguments.rate, stop):
        ticks = int((time.monotonic() - start) * DETECTOR_CLOCK_HZ)
        sender.send_frame(source.frame(index), arguments.first_frame_number + index, ticks,
                          arguments.frames or None)
        sent = index + 1
    sender.send_end_of_acquisition()
    elapsed = time.monotonic() - start
    print(f"simulator: sent {sent} frames in {elapsed:.1f} s "
          f"({sent / max(elapsed, 1e-9):.1f} frames/s)", flush=True)
    sender.close()
    return 0


def _write_frames(source: Any, filename: str, count: int) -> int:
    """Writes ``count`` frames of ``source`` to ``filename`` (dataset ``raw``); exit code."""
    import h5py

    try:
        with h5py.File(filename, "w") as handle:
            raw = handle.create_dataset("raw", (count, *FRAME_SHAPE), dtype="<u2",
                                        chunks=(1, *FRAME_SHAPE))
            for index in range(count):
                raw[index] = source.frame(index)
    except OSError as error:
        print(f"om_simulator.py jungfrau: error: cannot write {filename}: {error}",
              file=sys.stderr)
        return 1
    print(f"simulator: wrote {count} frames to {filename} (dataset raw)", flush=True)
    return 0


def main(argv: list[str] | None = None, prog: str = "om_simulator.py jungfrau") -> int:
    """Entry point of ``om_simulator.py jungfrau`` (and ``om_jungfrau_zmq_simulator.py``)."""
    return run(_parse_arguments(argv, prog))


if __name__ == "__main__":
    sys.exit(main())
