# SPDX-License-Identifier: GPL-3.0-or-later
"""A MAX IV streaming-receiver secondary port in miniature, for tests and demos.

``om_simulator.py streaming-receiver --url tcp://127.0.0.1:9999 --frames 20 --rate 10
--compression bslz4 --dtype uint32`` binds a ZeroMQ **PUSH** socket, waits for the
clients (the monitor's processing ranks), then sends a header, the images and a series end.

Written from the published format alone (the streaming-receiver README, "Secondary zmq data
port for live processing", gitlab.maxiv.lu.se/scisw/detectors/streaming-receiver) with pyzmq,
json and bitshuffle directly: it shares no code with om's decoder
(:mod:`om.data_retrieval_layer.data_event_handler_streaming_receiver`) nor with
:mod:`om.lib.bslz4`, so a test that decodes what it sends checks the decoder against the
format, not against itself. Multipart messages, the first part a JSON object:

* ``{"htype": "header", "msg_number": 0, "filename": ...}`` and a second JSON part of detector
  metadata (DECTRIS SIMPLON names: ``photon_energy`` eV, ``detector_distance`` m,
  ``count_time`` s, ``nimages``, ``threshold_energy`` eV, a nested ``detector`` map);
* ``{"htype": "image", "msg_number", "frame", "shape", "type", "compression"}`` (plus
  ``exposure_time``) and one binary part per (rows, columns) image: ``shape`` is
  ``[rows, columns]``, or ``[thresholds, rows, columns]`` with one part per threshold;
  ``compression`` ``none`` (the little-endian array bytes) or ``bslz4`` (a big-endian uint64
  of the uncompressed bytes and a big-endian uint32 block size in bytes, then
  ``bitshuffle.compress_lz4``'s blocks: HDF5 filter 32008's chunk);
* ``{"htype": "series_end", "msg_number"}``.

``msg_number`` counts every message of the series from 0 (the header).

Synthetic images (:func:`synthetic_image`): Poisson background, Gaussian Bragg spots at known
positions (:func:`spot_count` per image) and a 4x4 block of masked pixels (the all-ones value
of unsigned types, -1 for signed ones as PILATUS' gaps).
"""

import argparse
import json
import math
import struct
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from om.simulation.push_sender import PushSender, run_series
from om.simulation.sender_arguments import parse_sender_arguments, sender_parser

BLOCK_BYTES = 8192
MASKED_BLOCK = (slice(300, 304), slice(150, 154))
"""Where :func:`synthetic_image` puts its masked pixels (rows, columns)."""
DTYPES = ("uint16", "uint32", "int32", "float32")


def bslz4_blob(image: np.ndarray) -> bytes:
    """The bslz4 blob of an array (its little-endian bytes, bitshuffled and LZ4-compressed in
    blocks of 8192 bytes, behind the 12-byte header)."""
    array = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    import bitshuffle

    block = BLOCK_BYTES // array.dtype.itemsize
    body = bitshuffle.compress_lz4(array, block)
    return struct.pack(">QI", array.nbytes, block * array.dtype.itemsize) + body.tobytes()


def header_message(msg_number: int, filename: str,
                   metadata: dict[str, Any] | None = None) -> list[bytes]:
    """The parts of a header message (a second JSON part when ``metadata`` is given)."""
    parts = [json.dumps({"htype": "header", "msg_number": msg_number,
                         "filename": filename}).encode()]
    if metadata is not None:
        parts.append(json.dumps(metadata).encode())
    return parts


def image_message(msg_number: int, frame: int, image: np.ndarray, compression: str = "bslz4",
                  **extra: Any) -> list[bytes]:
    """The parts of an image message.

    Args:
        msg_number: the message's number in the series.
        frame: the image's frame number (from 0).
        image: (rows, columns), or (thresholds, rows, columns) sent as one part per threshold.
        compression: ``"bslz4"`` or ``"none"``.
        extra: more keys of the JSON part (e.g. ``exposure_time``, ``timestamp``).
    """
    planes = [image] if image.ndim == 2 else list(image)
    content = {"htype": "image", "msg_number": msg_number, "frame": frame,
               "shape": list(image.shape), "type": image.dtype.name,
               "compression": compression, **extra}
    parts = [json.dumps(content).encode()]
    for plane in planes:
        if compression == "bslz4":
            parts.append(bslz4_blob(plane))
        else:
            parts.append(np.ascontiguousarray(plane, plane.dtype.newbyteorder("<")).tobytes())
    return parts


def series_end_message(msg_number: int) -> list[bytes]:
    """The parts of a series_end message."""
    return [json.dumps({"htype": "series_end", "msg_number": msg_number}).encode()]


def detector_metadata(*, photon_energy: float = 12400.0, detector_distance: float = 0.1,
                      frames: int = 1, count_time: float = 0.01) -> dict[str, Any]:
    """Header metadata with DECTRIS SIMPLON names: photon energy (eV), detector distance (m),
    count time (s), number of images, threshold energy (eV), a nested ``detector`` map."""
    return {"photon_energy": photon_energy, "detector_distance": detector_distance,
            "count_time": count_time, "frame_time": count_time * 1.01, "nimages": frames,
            "threshold_energy": photon_energy / 2,
            "detector": {"description": "om simulated streaming-receiver source",
                         "x_pixel_size": 75e-6, "y_pixel_size": 75e-6,
                         "sensor": {"material": "Si", "thickness": 450e-6}}}


def spot_count(index: int, spots_per_frame: int = 15) -> int:
    """Bragg spots in synthetic image ``index``: every 4th image (3, 7, ...) has 2 (a miss)."""
    return 2 if index % 4 == 3 else spots_per_frame


def synthetic_image(index: int, shape: tuple[int, int] = (512, 512), *, dtype: str = "uint32",
                    spots_per_frame: int = 15, thresholds: int = 0, seed: int = 0,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its spots (deterministic for ``index`` and ``seed``).

    Spots are Gaussians (400 photons at the peak, sigma 1 pixel) centred on pixels at 40 to
    0.8 x (half the smaller side) pixels from the image centre, at least 16 pixels apart and
    away from the masked block, on a Poisson background of 10 photons.

    Args:
        thresholds: 0 for a (rows, columns) image; n for a (n, rows, columns) multi-threshold
            image whose threshold k > 0 is the first divided by k + 1.

    Returns:
        The image (of ``dtype``) and the spots: a float64 (n, 2) array of (row, column).

    Raises:
        ValueError: when ``shape`` is smaller than 128 x 128.
    """
    rows, columns = shape
    if min(rows, columns) < 128:
        raise ValueError(f"synthetic images need at least 128x128 pixels, not {rows}x{columns}")
    rng = np.random.default_rng([seed, index, 7])
    centre = (rows / 2.0, columns / 2.0)
    masked = ((MASKED_BLOCK[0].start + MASKED_BLOCK[0].stop) / 2,
              (MASKED_BLOCK[1].start + MASKED_BLOCK[1].stop) / 2)
    wanted = spot_count(index, spots_per_frame)
    spots: list[tuple[float, float]] = []
    for _ in range(200 * max(wanted, 1)):
        if len(spots) == wanted:
            break
        radius = rng.uniform(40.0, 0.4 * min(rows, columns))
        angle = rng.uniform(0.0, 2 * math.pi)
        spot = (round(centre[0] + radius * math.sin(angle)),
                round(centre[1] + radius * math.cos(angle)))
        if all(math.dist(spot, other) >= 16 for other in [*spots, masked]):
            spots.append(spot)
    photons = rng.poisson(10.0, shape).astype(np.float64)
    offsets = np.arange(-4, 5)
    kernel = 400.0 * np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 2.0)
    for row, column in spots:
        photons[row - 4:row + 5, column - 4:column + 5] += kernel
    stack = [photons] + [photons / (k + 1) for k in range(1, thresholds)]
    planes = []
    for plane in stack:
        typed = np.round(plane).astype(dtype) if np.dtype(dtype).kind in "ui" else \
            plane.astype(dtype)
        if np.dtype(dtype).kind == "u":
            typed[MASKED_BLOCK] = np.iinfo(dtype).max
        elif np.dtype(dtype).kind == "i":
            typed[MASKED_BLOCK] = -1
        planes.append(typed)
    image = np.stack(planes) if thresholds else planes[0]
    return image, np.array(spots, dtype=np.float64).reshape(-1, 2)


class StreamingReceiverSender(PushSender):
    """A bound PUSH socket sending as the streaming-receiver's secondary port does."""


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = sender_parser("om_simulator.py streaming-receiver",
                           __doc__.split("\n\n")[0], url="tcp://127.0.0.1:9999",
                           compressions=("bslz4", "none"), dtypes=DTYPES, dtype="uint32")
    parser.add_argument("--thresholds", type=int, default=0, metavar="N",
                        help="send (N, rows, columns) multi-threshold images (default 0: "
                        "(rows, columns))")
    parser.add_argument("--filename", default="/data/visitors/om/sim/scan_000001.h5",
                        help="the header's filename")
    parser.add_argument("--photon-energy", type=float, default=12400.0,
                        help="the header's photon_energy, eV (default 12400)")
    parser.add_argument("--detector-distance", type=float, default=0.1,
                        help="the header's detector_distance, m (default 0.1)")
    parser.add_argument("--no-metadata", action="store_true",
                        help="send the header without its metadata part")
    arguments = parse_sender_arguments(parser, argv)
    if arguments.thresholds < 0:
        parser.error("--thresholds: 0 or more")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Runs the sender; returns the exit code."""
    arguments = _parse_arguments(argv)

    def series(indices: Iterator[int]) -> Iterator[list[bytes]]:
        metadata = None if arguments.no_metadata else detector_metadata(
            photon_energy=arguments.photon_energy,
            detector_distance=arguments.detector_distance, frames=arguments.frames,
            count_time=arguments.frame_time)
        yield header_message(0, arguments.filename, metadata)
        sent = 0
        for index in indices:
            image, _ = synthetic_image(index, arguments.image_shape, dtype=arguments.dtype,
                                       spots_per_frame=arguments.spots_per_frame,
                                       thresholds=arguments.thresholds, seed=arguments.seed)
            yield image_message(index + 1, index, image, arguments.compression,
                                exposure_time=arguments.frame_time)
            sent = index + 1
        yield series_end_message(sent + 1)

    return run_series(arguments, series)


if __name__ == "__main__":
    sys.exit(main())
