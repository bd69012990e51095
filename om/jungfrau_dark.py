# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_jungfrau_dark.py``: JUNGFRAU pedestals, noise and bad pixels from the dark runs.

A JUNGFRAU is calibrated with three dark runs (no beam), one per gain stage: G0 in dynamic gain
mode, then the gain forced to G1, then forced to G2. This tool reads those frames, either live
from the detector's ZeroMQ streams (``--urls``, one per module, as slsReceiver publishes them)
or from HDF5 files of raw frames (``--file``, repeatable), and writes into ``--output``:

* ``{prefix}_dark_module{m}.h5`` per module: the pedestals ``gain0``, ``gain1``, ``gain2``
  (float32 (512, 1024), OM's whole-word convention unless ``--pedestal-convention adc``), the
  noise ``rms0``, ``rms1``, ``rms2`` (float32, ADU) and the readings ``count0``, ``count1``,
  ``count2`` (int32) per pixel: the monitor's ``detector_dark_filenames``;
* ``{prefix}_bad_pixel_map.h5``: ``/data/data`` uint8 (n_modules * 512, 1024), 1 good, 0 bad,
  the monitor's ``bad_pixel_map_filename``, and ``/data/reasons``, the rules that flagged each
  pixel;

and prints a summary. Every frame is sorted into the stage most of its pixels are in, so the
three runs can come in any order and in one invocation: with ``--urls`` the tool stops once each
stage of ``--stages`` has ``--frames`` frames. Each pixel reading counts for the stage of its
own gain code. Stages left out of ``--stages`` (e.g. refreshing G0 only) are copied from
``--previous-darks``. See ``docs/dark_runs.md``.
"""

import argparse
import logging
import os
import pathlib
import sys
import threading
import time

import h5py
import numpy as np

from om.data_retrieval_layer.frame_distribution import MAX_SLOTS, FrameReceiver, new_secret
from om.data_retrieval_layer.jungfrau_bad_pixels import (
    BAD_PIXEL_MAP_DATASET,
    RULES,
    BadPixelRules,
    BadPixels,
    find_bad_pixels,
    write_bad_pixel_map,
)
from om.data_retrieval_layer.jungfrau_calibration import read_dark_file
from om.data_retrieval_layer.jungfrau_calibration_files import write_dark_files
from om.data_retrieval_layer.jungfrau_dark_accumulator import (
    MODULE_SHAPE,
    STAGE_NAMES,
    DarkAccumulator,
    DarkStatistics,
)
from om.data_retrieval_layer.jungfrau_frame_assembler import JungfrauFrameAssembler
from om.lib.exceptions import OmConfigurationError
from om.lib.stop_signals import on_stop_signals

PROG = "om_jungfrau_dark.py"
DEFAULT_STREAM_FRAMES = 1000
_FILE_BLOCK = 16  # frames read from a file at once (32 MB for a 1M)
_PROGRESS_INTERVAL = 10.0


class DarkToolError(Exception):
    """A problem with the input or the output, reported as one line."""


def _parse_stages(text: str) -> tuple[int, ...]:
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    if not names or any(name not in STAGE_NAMES for name in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of G0, G1, G2")
    return tuple(sorted(STAGE_NAMES.index(name) for name in names))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _queue_length(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_SLOTS:  # the frame dealer refuses more
        raise argparse.ArgumentTypeError(f"{text}: must be at most {MAX_SLOTS}")
    return value


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    defaults = BadPixelRules()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--urls", help="module stream URLs, comma-separated, module 0 first "
                        "(e.g. tcp://10.0.0.5:30001,tcp://10.0.0.5:30002)")
    source.add_argument("--file", action="append", metavar="FILE",
                        help="HDF5 file of raw frames, uint16 (n, n_modules * 512, 1024); "
                        "repeat for the runs of the different stages")
    parser.add_argument("--dataset", default="raw",
                        help="dataset of the raw frames in every --file (default raw)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for the dark files and the bad pixel map (created)")
    parser.add_argument("--prefix", default="jungfrau", help="file name prefix (default jungfrau)")
    parser.add_argument("--stages", type=_parse_stages, default=(0, 1, 2), metavar="G0,G1,G2",
                        help="stages to measure (default all three); the others come from "
                        "--previous-darks")
    parser.add_argument("--previous-darks", nargs="+", metavar="FILE",
                        help="dark files (one per module, module 0 first) to copy the stages "
                        "not in --stages from")
    parser.add_argument("--frames", type=_positive_int, metavar="N",
                        help=f"frames per stage (streams: default {DEFAULT_STREAM_FRAMES}, then "
                        "stop; files: default all frames)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="streams: give up when no frame of a stage still missing frames "
                        "arrived for S s (default 120)")
    parser.add_argument("--half-modules", action="store_true",
                        help="streams: two URLs per module, 256 rows each (two interfaces)")
    parser.add_argument("--queue", type=_queue_length, default=64, metavar="N",
                        help="streams: frames buffered while the tool is busy, 2 MB each per "
                        f"1M; frames beyond are skipped (default 64, at most {MAX_SLOTS})")
    parser.add_argument("--pedestal-convention", choices=("word", "adc"), default="word",
                        help="word: OM's whole-word means (G1 + 16384, G2 + 49152); adc: "
                        "ADC units (PSI) (default word)")
    rules = parser.add_argument_group("bad-pixel rules (a pixel bad in any stage is bad)")
    rules.add_argument("--min-count", type=int, default=defaults.min_count, metavar="N",
                       help="never_seen: fewer than N readings in a stage "
                       f"(default {defaults.min_count})")
    rules.add_argument("--stuck-rms", type=float, default=defaults.stuck_rms, metavar="ADU",
                       help="stuck: RMS below ADU with 2 or more readings "
                       f"(default {defaults.stuck_rms})")
    rules.add_argument("--noisy-factor", type=float, default=defaults.noisy_factor, metavar="K",
                       help="noisy: RMS above K times the module's median RMS of the stage "
                       f"(default {defaults.noisy_factor:g})")
    rules.add_argument("--pedestal-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       default=(defaults.pedestal_min, defaults.pedestal_max),
                       help="pedestal_range: pedestal outside LOW..HIGH ADU (default "
                       f"{defaults.pedestal_min:g} {defaults.pedestal_max:g})")
    arguments = parser.parse_args(argv)
    if arguments.file and (arguments.half_modules):
        parser.error("--half-modules applies to --urls only")
    if arguments.timeout <= 0:
        parser.error("--timeout must be positive")
    if len(arguments.stages) < 3 and not arguments.previous_darks:
        missing = ", ".join(STAGE_NAMES[s] for s in range(3) if s not in arguments.stages)
        parser.error(f"--stages leaves out {missing}: give --previous-darks to copy it from")
    return arguments


class StageCollector:
    """Feeds frames to a :class:`DarkAccumulator`, up to a number of frames per stage.

    Args:
        n_modules: modules per frame.
        stages: the stages wanted (0, 1, 2 for G0, G1, G2).
        frames_per_stage: frames wanted per stage, or None for every frame.

    Attributes:
        ignored: frames not used: in a stage not wanted, already complete, or without a valid
            pixel.
    """

    def __init__(self, n_modules: int, stages: tuple[int, ...],
                 frames_per_stage: int | None) -> None:
        self.accumulator = DarkAccumulator(n_modules)
        self.stages = stages
        self.frames_per_stage = frames_per_stage
        self.ignored = 0

    def offer(self, frame: np.ndarray) -> int | None:
        """Adds ``frame`` (uint16 (n_modules * 512, 1024)) if its stage still needs frames;
        returns the stage it was added to, or None."""
        stage = self.accumulator.majority_stage(frame)
        if stage is None or stage not in self.stages or (
                self.frames_per_stage is not None
                and self.accumulator.frames[stage] >= self.frames_per_stage):
            self.ignored += 1
            return None
        return self.accumulator.add(frame, stage)

    def done(self) -> bool:
        """Whether every wanted stage has its frames (never, without a number per stage)."""
        return self.frames_per_stage is not None and all(
            self.accumulator.frames[stage] >= self.frames_per_stage for stage in self.stages)

    def progress(self) -> str:
        """E.g. ``G0 1000/1000, G1 12/1000, G2 0/1000``."""
        target = f"/{self.frames_per_stage}" if self.frames_per_stage else ""
        return ", ".join(f"{STAGE_NAMES[stage]} {self.accumulator.frames[stage]}{target}"
                         for stage in self.stages)


def read_files(filenames: list[str], dataset: str, stages: tuple[int, ...],
               frames_per_stage: int | None) -> StageCollector:
    """Accumulates the raw frames of HDF5 files.

    Args:
        filenames: HDF5 files, each with ``dataset`` of uint16 (n, n_modules * 512, 1024) raw
            words (the same number of modules in every file).
        dataset: the dataset path in every file.
        stages: the stages wanted.
        frames_per_stage: the most frames used per stage, or None for all.

    Returns:
        The collector holding the accumulated frames.

    Raises:
        DarkToolError: a missing or unreadable file, a missing dataset, a dataset of the wrong
            dtype or shape, files with different numbers of modules.
    """
    collector: StageCollector | None = None
    for name in filenames:
        if not os.path.isfile(name):
            raise DarkToolError(f"{name}: no such file")
        try:
            handle = h5py.File(name, "r")
        except OSError as error:
            raise DarkToolError(f"{name}: cannot be read as HDF5 ({_one_line(error)})") from None
        with handle:
            frames = handle.get(dataset)
            if not isinstance(frames, h5py.Dataset):
                raise DarkToolError(f"{name}: no dataset {dataset!r}")
            shape, dtype = frames.shape, frames.dtype
            if dtype != np.uint16 or len(shape) != 3 or shape[2] != MODULE_SHAPE[1] or (
                    shape[1] % MODULE_SHAPE[0]) or shape[1] == 0:
                hint = " (the raw words must be uint16)" if dtype == np.int16 else ""
                raise DarkToolError(f"{name}/{dataset}: need uint16 (n_frames, n_modules * 512, "
                                    f"1024) raw words, got {dtype} {shape}{hint}")
            n_modules = shape[1] // MODULE_SHAPE[0]
            if collector is None:
                collector = StageCollector(n_modules, stages, frames_per_stage)
            elif n_modules != collector.accumulator.n_modules:
                raise DarkToolError(f"{name}/{dataset}: {n_modules} modules, but the first file "
                                    f"has {collector.accumulator.n_modules}")
            try:
                for start in range(0, shape[0], _FILE_BLOCK):
                    for frame in frames[start:start + _FILE_BLOCK]:
                        collector.offer(frame)
                    if collector.done():
                        break
            except OSError as error:
                raise DarkToolError(f"{name}/{dataset}: cannot be read "
                                    f"({_one_line(error)})") from None
    assert collector is not None  # argparse gives at least one file
    return collector


def read_streams(urls: list[str], rows_per_stream: int, stages: tuple[int, ...],
                 frames_per_stage: int, timeout: float, queue: int,
                 stop: threading.Event) -> StageCollector:
    """Accumulates frames from the module streams until every stage has its frames.

    The streams are assembled into frames by the monitor's
    :class:`~om.data_retrieval_layer.jungfrau_frame_assembler.JungfrauFrameAssembler`, which
    hands them to this thread through shared memory (frames beyond ``queue`` are skipped while
    the tool is busy: dark frames are interchangeable).

    Args:
        urls: the stream URLs, module 0 first.
        rows_per_stream: 512 (one stream per module) or 256 (two per module).
        stages: the stages wanted.
        frames_per_stage: the frames wanted per stage.
        timeout: give up after this many seconds without a frame that was used, s.
        queue: frames buffered between the assembler and the accumulation.
        stop: set (e.g. by Ctrl-C) to give up.

    Returns:
        The collector holding the accumulated frames.

    Raises:
        DarkToolError: a malformed URL, no frame within ``timeout`` s, interrupted.
    """
    n_modules = len(urls) * rows_per_stream // MODULE_SHAPE[0]
    collector = StageCollector(n_modules, stages, frames_per_stage)
    secret = new_secret()
    try:
        assembler = JungfrauFrameAssembler(
            stream_urls=urls, distribution_host="127.0.0.1", rows_per_stream=rows_per_stream,
            assembly_timeout=2.0, expected_receivers=1,  # dark frames need no haste
            secret=secret)
    except OmConfigurationError as error:
        raise DarkToolError(str(error)) from None
    receiver = FrameReceiver(assembler.endpoint, n_slots=queue, secret=secret,
                             slot_bytes=n_modules * MODULE_SHAPE[0] * MODULE_SHAPE[1] * 2)
    assembler.start()
    print(f"{PROG}: waiting for {frames_per_stage} frames of each of "
          f"{', '.join(STAGE_NAMES[s] for s in stages)} from {', '.join(urls)} "
          "(take the dark runs in any order)", flush=True)
    started = [collector.accumulator.frames[stage] > 0 for stage in range(3)]
    last_used = last_progress = time.monotonic()
    try:
        while not collector.done():
            if stop.is_set():
                raise DarkToolError(f"interrupted with {collector.progress()} frames; "
                                    "nothing written")
            now = time.monotonic()
            if now - last_used > timeout:
                if not any(collector.accumulator.frames):
                    raise DarkToolError(f"no frame arrived within {timeout:g} s from "
                                        f"{', '.join(urls)} (is the detector streaming there?)")
                raise DarkToolError(f"no frame of a stage still missing frames within "
                                    f"{timeout:g} s ({collector.progress()} frames, "
                                    f"{collector.ignored} ignored); nothing written")
            if now - last_progress > _PROGRESS_INTERVAL:
                print(f"{PROG}: {collector.progress()} frames", flush=True)
                last_progress = now
            received = receiver.receive(100)
            if received is None:
                continue
            frame = np.concatenate([np.frombuffer(image, dtype="<u2").reshape(
                rows_per_stream, MODULE_SHAPE[1]) for image in received.images])
            receiver.release(received)
            stage = collector.offer(frame)
            if stage is None:
                continue
            last_used = time.monotonic()
            frames = collector.accumulator.frames[stage]
            if not started[stage]:
                started[stage] = True
                print(f"{PROG}: {STAGE_NAMES[stage]} frames arriving", flush=True)
            if frames == frames_per_stage:
                print(f"{PROG}: {STAGE_NAMES[stage]} complete ({frames} frames)", flush=True)
    finally:
        receiver.close()
        assembler.stop()
    return collector


def _read_previous_darks(filenames: list[str], n_modules: int,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pedestals (ADC), RMS (NaN if absent) and counts (-1 if absent), (n_modules, 3, ...)."""
    if len(filenames) != n_modules:
        raise DarkToolError(f"--previous-darks: {len(filenames)} files for {n_modules} modules")
    shape = (n_modules, 3, *MODULE_SHAPE)
    pedestal, rms = np.empty(shape), np.full(shape, np.nan)
    count = np.full(shape, -1, dtype=np.int64)
    for module, name in enumerate(filenames):
        try:
            pedestal[module] = read_dark_file(name, "auto")
        except OmConfigurationError as error:
            raise DarkToolError(str(error)) from None
        with h5py.File(name, "r") as handle:
            for stage in range(3):
                for array, dataset in ((rms, f"rms{stage}"), (count, f"count{stage}")):
                    values = handle.get(dataset)
                    if isinstance(values, h5py.Dataset) and values.shape == MODULE_SHAPE:
                        array[module, stage] = values[()]
    return pedestal, rms, count


# A dark run's median noise per stage is ~10-30 ADU in G0 and ~2-5 in G1 and G2 (the simulator:
# 24, 3, 2); several times that means frames with beam or light, whose pedestals are wrong.
_DARK_NOISE_LIMIT_ADU = (100.0, 30.0, 30.0)


def _not_dark_warnings(bad: BadPixels, stages: tuple[int, ...]) -> list[str]:
    """One line per module and measured stage whose median noise no dark run has."""
    warnings = []
    for module in range(bad.median_rms.shape[0]):
        for stage in stages:
            noise = bad.median_rms[module, stage]
            if np.isfinite(noise) and noise > _DARK_NOISE_LIMIT_ADU[stage]:
                warnings.append(
                    f"module {module} {STAGE_NAMES[stage]}: median noise {noise:.1f} ADU, above "
                    f"{_DARK_NOISE_LIMIT_ADU[stage]:g} ADU, far more than a dark run's: were "
                    "these frames taken with beam or light? Their pedestals would be wrong.")
    return warnings


def _summary(statistics: DarkStatistics, stages: tuple[int, ...], bad: BadPixels,
             pedestal: np.ndarray, rules: BadPixelRules, ignored: int) -> str:
    n_modules = pedestal.shape[0]
    frames = ", ".join(f"{STAGE_NAMES[s]} {statistics.frames[s]}" for s in stages)
    lines = [f"frames per stage: {frames} ({ignored} frames not used)", "",
             "module  stage  median pedestal  median RMS  pixels without pedestal"]
    for module in range(n_modules):
        for stage in range(3):
            values = pedestal[module, stage]
            finite = values[np.isfinite(values)]
            median = f"{np.median(finite):10.1f} ADU" if finite.size else "           -  "
            source = "" if stage in stages else "  (previous darks)"
            noise = bad.median_rms[module, stage]
            noise_text = f"{noise:6.2f} ADU" if np.isfinite(noise) else "     -    "
            lines.append(f"{module:6d}  {STAGE_NAMES[stage]:>5}  {median}  {noise_text}  "
                         f"{values.size - finite.size:10d}{source}")
    thresholds = {
        "never_seen": f"fewer than {rules.min_count} readings",
        "stuck": f"RMS < {rules.stuck_rms:g} ADU",
        "noisy": f"RMS > {rules.noisy_factor:g} x module median",
        "pedestal_range": f"pedestal outside {rules.pedestal_min:g}..{rules.pedestal_max:g} ADU",
    }
    lines += ["", "bad pixels       " + "".join(f"{STAGE_NAMES[s]:>9}" for s in range(3))
              + "      any  rule"]
    for rule in RULES:
        per_stage = "".join(f"{int(bad.flagged(rule, s).sum()):9d}" for s in range(3))
        lines.append(f"  {rule:<15}{per_stage}{int(bad.flagged(rule).sum()):9d}  "
                     f"{thresholds[rule]}")
    total = int(bad.good.size - bad.good.sum())
    lines.append(f"  {'total':<15}{'':27}{total:9d}  of {bad.good.size} pixels "
                 f"({100.0 * total / bad.good.size:.3f} %)")
    return "\n".join(lines)


def run(arguments: argparse.Namespace) -> int:
    """Runs the tool; returns the exit code.

    Raises:
        DarkToolError: on bad input or output (see :func:`main`).
    """
    rules = BadPixelRules(min_count=arguments.min_count, stuck_rms=arguments.stuck_rms,
                          noisy_factor=arguments.noisy_factor,
                          pedestal_min=arguments.pedestal_range[0],
                          pedestal_max=arguments.pedestal_range[1])
    stages = arguments.stages
    if arguments.file:
        collector = read_files(arguments.file, arguments.dataset, stages, arguments.frames)
    else:
        urls = [url.strip() for url in arguments.urls.split(",") if url.strip()]
        if not urls or (arguments.half_modules and len(urls) % 2):
            raise DarkToolError(f"--urls {arguments.urls!r}: one URL per module (two with "
                                "--half-modules)")
        stop = threading.Event()
        on_stop_signals(stop.set)
        collector = read_streams(urls, 256 if arguments.half_modules else 512, stages,
                                 arguments.frames or DEFAULT_STREAM_FRAMES, arguments.timeout,
                                 arguments.queue, stop)
    statistics = collector.accumulator.statistics()
    for stage in stages:
        frames = statistics.frames[stage]
        if frames < max(rules.min_count, 2):
            raise DarkToolError(
                f"{frames} {STAGE_NAMES[stage]} frames (frames whose pixels are mostly in "
                f"{STAGE_NAMES[stage]}), at least {max(rules.min_count, 2)} needed: give the "
                f"{STAGE_NAMES[stage]} dark run, or leave the stage out of --stages and give "
                "--previous-darks; nothing written")

    pedestal, rms = statistics.pedestal, statistics.rms
    count = statistics.count
    n_modules = pedestal.shape[0]
    others = [stage for stage in range(3) if stage not in stages]
    if others:
        previous = _read_previous_darks(arguments.previous_darks, n_modules)
        for array, old in zip((pedestal, rms, count), previous):
            array[:, others] = old[:, others]
    bad = find_bad_pixels(pedestal, rms, count, rules)

    attributes = {"created_by": PROG, "pedestal_convention": arguments.pedestal_convention,
                  "rms_units": "ADU", "stages_measured": ",".join(STAGE_NAMES[s] for s in stages)}
    for stage in stages:
        attributes[f"frames_{STAGE_NAMES[stage]}"] = statistics.frames[stage]
    extra = {}
    for stage in range(3):
        extra[f"rms{stage}"] = rms[:, stage].astype(np.float32)
        extra[f"count{stage}"] = np.clip(count[:, stage], -1, 2**31 - 1).astype(np.int32)
    output = pathlib.Path(arguments.output).resolve()
    try:
        darks = write_dark_files(output, pedestals_adc=pedestal,
                                 pedestal_convention=arguments.pedestal_convention,
                                 prefix=arguments.prefix, extra_datasets=extra,
                                 attributes=attributes)
        bad_map = write_bad_pixel_map(output / f"{arguments.prefix}_bad_pixel_map.h5", bad, rules)
    except OSError as error:
        raise DarkToolError(f"cannot write to {output}: {_one_line(error)}") from None

    print(_summary(statistics, stages, bad, pedestal, rules, collector.ignored))
    for warning in _not_dark_warnings(bad, stages):
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)
    print("\nwritten (for monitor.yaml):")
    print("  data_retrieval_layer:")
    print("    detector_dark_filenames: [" + ", ".join(darks) + "]")
    print("  peakfinder8_peak_detection:")
    print(f"    bad_pixel_map_filename: {bad_map}")
    print(f"    bad_pixel_map_hdf5_path: {BAD_PIXEL_MAP_DATASET}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``om_jungfrau_dark.py``: 0 on success; on bad input or output one line
    ``om_jungfrau_dark.py: error: ...`` on stderr and 1 (2 for bad options, from argparse)."""
    arguments = _parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    try:
        return run(arguments)
    except DarkToolError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
        return 1


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
