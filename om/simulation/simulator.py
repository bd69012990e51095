# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_simulator.py MODE [options]``: one simulator for every source the monitor reads.

Each mode runs one format's sender with its own options (``om_simulator.py MODE --help``);
the older per-format scripts (``om_jungfrau_zmq_simulator.py``, ``om_streaming_receiver_sender.py``,
``om_dectris_stream_sender.py``, ``om_nxmx_writer.py``) remain as aliases of the modes.
"""

import argparse
import importlib
import sys
from typing import NamedTuple


class Mode(NamedTuple):
    """A simulator mode: the module whose ``main(argv)`` runs it, and one line of help."""

    module: str
    summary: str


MODES: dict[str, Mode] = {
    "jungfrau": Mode("om.simulation.jungfrau_zmq_simulator",
                     "JUNGFRAU 1M as slsReceiver: JSON header + image per module, PUB"),
    "streaming-receiver": Mode("om.simulation.streaming_receiver_sender",
                               "MAX IV streaming-receiver: header, images, series_end, PUSH"),
    "dectris-stream": Mode("om.simulation.dectris_stream_sender",
                           "DECTRIS Stream V2 / Jungfraujoch: CBOR start, images, end, PUSH"),
    "files": Mode("om.simulation.nxmx_writer",
                  "NXmx master + data files as Jungfraujoch's writer (--notify: PUB)"),
}
"""The modes, by the name given on the command line."""


def _parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in MODES) + 2
    modes = "\n".join(f"  {name:<{width}}{mode.summary}" for name, mode in MODES.items())
    parser = argparse.ArgumentParser(
        prog="om_simulator.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One simulator for every source the monitor reads: MODE picks the format.",
        epilog=f"modes:\n{modes}\n\n'om_simulator.py MODE --help' shows a mode's options.\n"
               "'om_simulator.py --write-config FILE MODE' writes a monitor.yaml that reads "
               "MODE's output\n(its geometry in om/data, peakfinder8 settings for its spots).")
    parser.add_argument("--write-config", metavar="FILE",
                        help="write a monitor.yaml for MODE's default output to FILE and exit")
    parser.add_argument("mode", choices=tuple(MODES), metavar="MODE",
                        help="the format to simulate (see modes below)")
    # Everything after the mode, --help included, belongs to the mode's own parser.
    parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="...",
                        help="the mode's options")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``om_simulator.py``: runs the mode named by the first argument with the
    remaining ones; returns its exit code."""
    arguments = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if arguments.write_config:
        from om.simulation.configuration import write_simulator_configuration

        try:
            written = write_simulator_configuration(arguments.write_config, arguments.mode)
        except OSError as error:
            print(f"om_simulator.py: error: {error}", file=sys.stderr)
            return 1
        print(f"om_simulator.py: wrote {written} for mode {arguments.mode}")
        return 0
    module = importlib.import_module(MODES[arguments.mode].module)
    import zmq

    try:
        return module.main(arguments.arguments)
    except zmq.ZMQError as error:  # e.g. a second simulator on the same port
        print(f"om_simulator.py {arguments.mode}: error: {error} (is another simulator or "
              "program using the port? choose other URLs)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
