# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_monitor.py SOURCE [-c monitor.yaml]``: the monitor, run as ``mpiexec -n N om_monitor.py``.

Rank 0 collects, the other N-1 ranks process. Configuration errors stop every rank before any
work, with one message naming the key and the file, and a non-zero exit code. SIGINT or
SIGTERM stops every rank within a few seconds with a final summary.
"""

import argparse
import logging
import sys
import threading
from typing import Any

import zmq

from om.lib.components import resolve_class
from om.lib.exceptions import OmException
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.problems import log_format
from om.lib.stop_signals import on_stop_signals

OM_GROUP = ParameterGroup("om", (
    Parameter("parallelization_layer", str, required=True,
              description="class of the parallelization layer (MpiParallelization)"),
    Parameter("data_retrieval_layer", str, required=True,
              description="class of the data retrieval layer (e.g. Jungfrau1MZmqDataRetrieval)"),
    Parameter("processing_layer", str, required=True,
              description="class of the processing layer (e.g. CrystallographyProcessing)"),
    Parameter("max_consecutive_failed_events", int, default=20, minimum=0,
              description="stop the monitor (exit code 1) when a processing rank's last this "
              "many events all failed, e.g. frames the geometry does not fit (0: never)"),
))


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="om_monitor.py",
        description="Real-time serial crystallography monitor. Run as: "
                    "mpiexec -n N om_monitor.py SOURCE [-c monitor.yaml] (N >= 2).",
    )
    parser.add_argument("source", nargs="?", help="the data source, as the configured data "
                        "retrieval layer reads it: JUNGFRAU 1M module stream URLs "
                        "(tcp://127.0.0.1:30001,tcp://127.0.0.1:30002), a detector's PUSH URL, "
                        "HDF5/NXmx files or glob patterns (see docs/)")
    parser.add_argument("-c", "--config", default="monitor.yaml",
                        help="configuration file (default: monitor.yaml)")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--crystfel-geometry", action="store_true",
                        help="print the path of the CrystFEL geometry file matching the live "
                        "frames for indexamajig (docs/crystfel.md) and exit")
    arguments = parser.parse_args(argv)
    if arguments.source is None and not arguments.crystfel_geometry:
        parser.error("the SOURCE argument is required")
    return arguments


def build_monitor(source: str, config: str) -> Any:
    """Reads and checks the configuration, then builds the three layers.

    Returns:
        The parallelization layer, ready for ``initialize()``.

    Raises:
        OmConfigurationError: naming the key and the file on any configuration error.
    """
    parameters = MonitorParameters(config)
    parameters.validate([OM_GROUP], complete=False)  # first the class names alone
    classes = {
        key: resolve_class(parameters.get("om", key), key=key, filename=parameters.filename)
        for key in ("parallelization_layer", "data_retrieval_layer", "processing_layer")
    }
    parameters.validate([
        OM_GROUP, *(group for cls in classes.values() for group in cls.parameter_groups)
    ])
    data_retrieval = classes["data_retrieval_layer"](parameters=parameters, source=source)
    processing = classes["processing_layer"](parameters=parameters)
    return classes["parallelization_layer"](
        data_retrieval_layer=data_retrieval, processing_layer=processing, parameters=parameters
    )


def main(argv: list[str] | None = None, early_stop: threading.Event | None = None) -> int:
    """Runs the monitor; returns the exit code.

    Args:
        argv: the command line (default: ``sys.argv[1:]``).
        early_stop: set when a stop signal came before this function ran
            (:mod:`om.monitor_launcher`, the ``om_monitor.py`` command, catches them first).
    """
    arguments = _parse_arguments(argv)
    if arguments.crystfel_geometry:
        from om.lib.package_data import packaged_file

        print(packaged_file("jungfrau1M_crystfel.geom"))
        return 0
    # Signals during the start-up (starting MPI, reading files, compiling) are kept for after
    # it: a rank that died of a KeyboardInterrupt there would make mpiexec kill the others.
    if early_stop is None:  # not started by om_monitor.py, which catches them already
        early_stop = threading.Event()
        on_stop_signals(early_stop.set)
    from mpi4py import MPI  # here, so that --help works without starting MPI

    rank = MPI.COMM_WORLD.Get_rank()
    logging.basicConfig(level=arguments.log_level,
                        format=log_format(rank), stream=sys.stderr)
    try:
        monitor = build_monitor(arguments.source, arguments.config)
        monitor.initialize()
    except OmException as error:
        if rank == 0:
            print(f"om_monitor.py: error: {error}", file=sys.stderr, flush=True)
        return 1

    on_stop_signals(monitor.request_stop)
    if early_stop.is_set():
        monitor.request_stop()
    exit_code = monitor.start()
    if monitor.error and monitor.is_collecting_rank:
        print(f"om_monitor.py: error: {monitor.error}", file=sys.stderr, flush=True)
    # Sockets closed with a linger (the last broadcast) get up to 1 s to deliver.
    zmq.Context.instance().destroy(linger=1000)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
