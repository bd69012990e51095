# SPDX-License-Identifier: GPL-3.0-or-later
"""The command-line options the PUSH senders of the simulation share (streaming-receiver,
DECTRIS Stream V2): where to bind, how many images at what rate, their type, shape and spots,
the seed, and how long to wait for the clients."""

import argparse
from collections.abc import Sequence


def sender_parser(prog: str, description: str, *, url: str, compressions: Sequence[str],
                  dtypes: Sequence[str], dtype: str) -> argparse.ArgumentParser:
    """An argument parser with the options every PUSH sender has; the caller adds its own.

    Args:
        prog: the program name of the usage line.
        description: the first paragraph of ``--help``.
        url: the default URL the PUSH socket binds.
        compressions: the choices of ``--compression`` (the first is the default).
        dtypes: the choices of ``--dtype``.
        dtype: the default ``--dtype``.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--url", default=url,
                        help=f"URL the PUSH socket binds (default {url})")
    parser.add_argument("--frames", type=int, default=20, help="images to send (default 20)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="images per second (0: as fast as possible; default 10)")
    parser.add_argument("--compression", default=compressions[0], choices=tuple(compressions))
    parser.add_argument("--dtype", default=dtype, choices=tuple(dtypes))
    parser.add_argument("--shape", default="512x512", help="ROWSxCOLUMNS (default 512x512)")
    parser.add_argument("--spots-per-frame", type=int, default=15,
                        help="Bragg spots per image, every 4th image has 2 (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-for-clients", type=int, default=1, metavar="N",
                        help="wait for N connected clients before sending (default 1; give "
                        "the number of processing ranks; 0: send at once, like a detector)")
    parser.add_argument("--wait-timeout", type=float, default=60.0, metavar="S",
                        help="give up waiting for the clients after S s (default 60)")
    return parser


def parse_sender_arguments(parser: argparse.ArgumentParser,
                           argv: list[str] | None) -> argparse.Namespace:
    """Parses ``argv`` with a :func:`sender_parser` parser (exits with a usage error on bad
    options) and adds ``image_shape`` ((rows, columns) of ``--shape``, at least 128 x 128) and
    ``frame_time`` (s: 1 / ``--rate``, or 0.01 when sending as fast as possible)."""
    arguments = parser.parse_args(argv)
    try:
        rows, columns = (int(n) for n in arguments.shape.lower().split("x"))
    except ValueError:
        parser.error(f"--shape {arguments.shape!r}: expected ROWSxCOLUMNS, e.g. 512x512")
    if min(rows, columns) < 128:  # the synthetic images' spots need room
        parser.error("--shape: at least 128x128")
    arguments.image_shape = (rows, columns)
    arguments.frame_time = 1.0 / arguments.rate if arguments.rate > 0 else 0.01
    return arguments
