# SPDX-License-Identifier: GPL-3.0-or-later
"""A DECTRIS Stream V2 source for tests and demos: a detector (or Jungfraujoch) in miniature.

``om_simulator.py dectris-stream --url tcp://127.0.0.1:31001 --frames 20 --rate 10
--compression bslz4`` binds a ZeroMQ **PUSH** socket, waits for the clients (the
monitor's processing ranks), then sends a start message, the images and an end message.

Written from the published format alone (DECTRIS' ``stream_v2/README.md`` and
``cbor/dectris-compression-tag.md``; RFC 8746), with cbor2 directly: it shares no code with om's
decoder (:mod:`om.data_retrieval_layer.cbor_stream_v2`) nor with :mod:`om.lib.bslz4`, so a test
that decodes what it sends checks the decoder against the format, not against itself:

* one CBOR map per ZeroMQ message, prefixed by the self-described tag 55799 (as Jungfraujoch;
  ``--no-self-described`` leaves it out);
* start: ``series_id``, ``series_unique_id``, ``arm_date``, ``beam_center_x``/``y`` (pixels),
  ``incident_energy`` (eV), ``incident_wavelength`` (Å), ``detector_distance`` (m, as
  Jungfraujoch), ``pixel_size_x``/``y`` (m), ``image_size_x``/``y`` (pixels),
  ``number_of_images``, ``channels``, ``count_time``, ``frame_time`` (s), ``saturation_value``,
  ``threshold_energy``, sensor fields;
* image: ``series_id``, ``series_unique_id``, ``image_id``, ``series_date``, ``start_time``,
  ``stop_time``, ``real_time`` (rationals of a 10 MHz time base), ``data`` =
  ``{"default": tag 40 [[rows, columns], typed array]}``, the typed array's byte string being
  raw little-endian or tag 56500 ``["bslz4" | "bszstd", element size, HDF5-framed blob]``; with
  ``--jungfraujoch-spots``, ``spots`` = ``[{"x": column, "y": row, "I": photons}, ...]``;
* end: ``series_id``, ``series_unique_id``.

Synthetic images (:func:`synthetic_frame`): Poisson background, Gaussian Bragg spots at known
positions, and a 4x4 block of masked pixels (the type's all-ones value, or its minimum for
signed types).
"""

import argparse
import datetime
import math
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import cbor2
import numpy as np

from om.simulation.push_sender import PushSender, run_series
from om.simulation.sender_arguments import parse_sender_arguments, sender_parser

TIME_BASE_HZ = 10_000_000
SELF_DESCRIBED_TAG = 55799
COMPRESSED_TAG = 56500
ROW_MAJOR_ARRAY_TAG = 40
BLOCK_BYTES = 8192
TYPED_ARRAY_TAGS = {  # RFC 8746 section 2.1, little-endian
    np.dtype("u1"): 64, np.dtype("<u2"): 69, np.dtype("<u4"): 70,
    np.dtype("<i2"): 77, np.dtype("<i4"): 78, np.dtype("<f4"): 85,
}
MASKED_BLOCK = (slice(300, 304), slice(150, 154))
"""Where :func:`synthetic_frame` puts its masked pixels (rows, columns)."""


def _hdf5_framed(array: np.ndarray, algorithm: str) -> bytes:
    """bitshuffle's HDF5-filter chunk: >Q uncompressed bytes, >I block bytes, the blocks."""
    import bitshuffle

    block = BLOCK_BYTES // array.dtype.itemsize
    compress = bitshuffle.compress_lz4 if algorithm == "bslz4" else bitshuffle.compress_zstd
    body = compress(np.ascontiguousarray(array), block)
    return struct.pack(">QI", array.nbytes, block * array.dtype.itemsize) + body.tobytes()


def encode_image(image: np.ndarray, compression: str = "bslz4") -> cbor2.CBORTag:
    """Returns the tag-40 multi-dimensional typed array of a 2-D image.

    Args:
        image: the image, (rows, columns), of a type of :data:`TYPED_ARRAY_TAGS`.
        compression: ``"bslz4"``, ``"bszstd"`` or ``"none"``.
    """
    array = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    tag = TYPED_ARRAY_TAGS[array.dtype]
    if compression == "none":
        payload: Any = array.tobytes()
    else:
        payload = cbor2.CBORTag(COMPRESSED_TAG, [compression, array.dtype.itemsize,
                                                 _hdf5_framed(array, compression)])
    return cbor2.CBORTag(ROW_MAJOR_ARRAY_TAG, [list(array.shape), cbor2.CBORTag(tag, payload)])


def _message(content: dict[str, Any], self_described: bool) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(SELF_DESCRIBED_TAG, content) if self_described else content)


def start_message(series_id: int, series_unique_id: str, *, image_shape: tuple[int, int],
                  number_of_images: int, incident_energy: float = 12400.0,
                  detector_distance: float = 0.1, beam_center: tuple[float, float] | None = None,
                  pixel_size: float = 75e-6, frame_time: float = 0.01,
                  saturation_value: int = 65534, self_described: bool = True,
                  arm_date: datetime.datetime | None = None) -> bytes:
    """Returns a start message (incident energy in eV, distance in m, beam centre in pixels
    (x, y), pixel size in m, frame time in s)."""
    rows, columns = image_shape
    if beam_center is None:
        beam_center = (columns / 2.0, rows / 2.0)
    return _message({
        "type": "start", "series_id": series_id, "series_unique_id": series_unique_id,
        "arm_date": arm_date or datetime.datetime.now(datetime.timezone.utc),
        "beam_center_x": float(beam_center[0]), "beam_center_y": float(beam_center[1]),
        "channels": ["default"], "count_time": frame_time * 0.99,
        "countrate_correction_enabled": False,
        "detector_description": "om simulated Stream V2 detector",
        "detector_serial_number": "OM-SIM-0001", "detector_distance": float(detector_distance),
        "detector_translation": [0.0, 0.0, float(detector_distance)],
        "flatfield_enabled": False, "frame_time": frame_time, "goniometer": {},
        "image_size_x": columns, "image_size_y": rows,
        "incident_energy": float(incident_energy),
        "incident_wavelength": 12398.42 / float(incident_energy),
        "number_of_images": number_of_images, "pixel_mask_enabled": True,
        "pixel_size_x": pixel_size, "pixel_size_y": pixel_size,
        "saturation_value": saturation_value, "sensor_material": "Si",
        "sensor_thickness": 450e-6, "threshold_energy": {"default": incident_energy / 2},
        "virtual_pixel_interpolation_enabled": False, "user_data": None,
    }, self_described)


def image_message(series_id: int, series_unique_id: str, image_id: int, image: np.ndarray, *,
                  compression: str = "bslz4", series_date: datetime.datetime | None = None,
                  start_time: float = 0.0, real_time: float = 0.0099,
                  spots: dict[str, np.ndarray] | None = None,
                  self_described: bool = True) -> bytes:
    """Returns an image message; ``spots`` (``fs``, ``ss``, ``intensity``), when given, are
    sent the Jungfraujoch way: ``[{"x": fs, "y": ss, "I": intensity}, ...]``."""
    ticks = round(start_time * TIME_BASE_HZ)
    exposure = round(real_time * TIME_BASE_HZ)
    content: dict[str, Any] = {
        "type": "image", "series_id": series_id, "series_unique_id": series_unique_id,
        "image_id": image_id,
        "series_date": series_date or datetime.datetime.now(datetime.timezone.utc),
        "start_time": [ticks, TIME_BASE_HZ], "stop_time": [ticks + exposure, TIME_BASE_HZ],
        "real_time": [exposure, TIME_BASE_HZ],
        "data": {"default": encode_image(image, compression)}, "user_data": None,
    }
    if spots is not None:
        content["spots"] = [{"x": float(x), "y": float(y), "I": float(i)}
                            for x, y, i in zip(spots["fs"], spots["ss"], spots["intensity"])]
    return _message(content, self_described)


def end_message(series_id: int, series_unique_id: str, self_described: bool = True) -> bytes:
    """Returns an end message."""
    return _message({"type": "end", "series_id": series_id,
                     "series_unique_id": series_unique_id}, self_described)


def spot_count(index: int, spots_per_frame: int = 15) -> int:
    """Bragg spots in synthetic frame ``index``: every 4th frame (3, 7, ...) has 2 (a miss)."""
    return 2 if index % 4 == 3 else spots_per_frame


def synthetic_frame(index: int, shape: tuple[int, int] = (512, 512), *,
                    dtype: str = "uint16", spots_per_frame: int = 15, seed: int = 0,
                    background: float = 10.0, amplitude: float = 400.0,
                    sigma: float = 1.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One synthetic image and its spots (deterministic for ``index`` and ``seed``).

    Spots are Gaussians (peak ``amplitude`` photons, ``sigma`` pixels) centred on pixels at 40
    to 0.8 x (half the smaller side) pixels from the image centre, at least 16 pixels from
    each other and from the masked block.

    Raises:
        ValueError: when ``shape`` is smaller than 128 x 128.

    Returns:
        The image ((rows, columns), ``dtype``: Poisson background of mean ``background``
        photons plus the spots, masked block set to the masked value) and its spots:
        ``fs``, ``ss`` (pixel indices) and ``intensity`` (summed photons) float64 arrays.
    """
    rows, columns = shape
    if min(rows, columns) < 128:
        raise ValueError(f"synthetic frames need at least 128x128 pixels, not {rows}x{columns}")
    rng = np.random.default_rng([seed, index])
    centre = np.array([rows / 2.0, columns / 2.0])
    masked_centre = np.array([(MASKED_BLOCK[0].start + MASKED_BLOCK[0].stop) / 2,
                              (MASKED_BLOCK[1].start + MASKED_BLOCK[1].stop) / 2])
    positions: list[np.ndarray] = []
    wanted = spot_count(index, spots_per_frame)
    max_radius = 0.8 * min(rows, columns) / 2
    for _ in range(100 * wanted):
        if len(positions) == wanted:
            break
        radius = rng.uniform(40.0, max_radius)
        angle = rng.uniform(0.0, 2 * math.pi)
        spot = np.round(centre + radius * np.array([math.sin(angle), math.cos(angle)]))
        if np.hypot(*(spot - masked_centre)) < 16:
            continue
        if all(np.hypot(*(spot - other)) >= 16 for other in positions):
            positions.append(spot)
    frame = rng.poisson(background, shape).astype(np.float64)
    yy, xx = np.mgrid[-4:5, -4:5]
    kernel = amplitude * np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    for row, column in positions:
        r, c = int(row), int(column)
        frame[r - 4:r + 5, c - 4:c + 5] += kernel
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    image = np.round(frame).astype(dtype) if info else frame.astype(dtype)
    if info is not None:
        image[MASKED_BLOCK] = info.max if info.min == 0 else info.min
    table = np.array(positions, dtype=np.float64).reshape(-1, 2)
    return image, {"fs": table[:, 1].copy(), "ss": table[:, 0].copy(),
                   "intensity": np.full(len(table), float(kernel.sum()))}


class DectrisStreamSender(PushSender):
    """A bound PUSH socket that sends Stream V2 messages as a DECTRIS detector does."""


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = sender_parser("om_simulator.py dectris-stream",
                           __doc__.split("\n\n")[0], url="tcp://127.0.0.1:31001",
                           compressions=("bslz4", "bszstd", "none"),
                           dtypes=("uint16", "uint32", "int32"), dtype="uint16")
    parser.add_argument("--jungfraujoch-spots", action="store_true",
                        help="send the spots in the image messages, as Jungfraujoch does")
    parser.add_argument("--series-id", type=int, default=1)
    parser.add_argument("--incident-energy", type=float, default=12400.0, help="eV")
    parser.add_argument("--detector-distance", type=float, default=0.1, help="m")
    parser.add_argument("--no-self-described", action="store_true",
                        help="leave out the CBOR tag 55799 (DECTRIS' messages may)")
    return parse_sender_arguments(parser, argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the sender; returns the exit code."""
    arguments = _parse_arguments(argv)
    described = not arguments.no_self_described
    series_id, unique = arguments.series_id, uuid.uuid4().hex

    def series(indices: Iterator[int]) -> Iterator[bytes]:
        series_date = datetime.datetime.now(datetime.timezone.utc)
        yield start_message(series_id, unique, image_shape=arguments.image_shape,
                            number_of_images=arguments.frames,
                            incident_energy=arguments.incident_energy,
                            detector_distance=arguments.detector_distance,
                            frame_time=arguments.frame_time, self_described=described,
                            arm_date=series_date)
        started = time.monotonic()
        for index in indices:
            image, spots = synthetic_frame(index, arguments.image_shape, dtype=arguments.dtype,
                                           spots_per_frame=arguments.spots_per_frame,
                                           seed=arguments.seed)
            yield image_message(series_id, unique, index, image,
                                compression=arguments.compression, series_date=series_date,
                                start_time=time.monotonic() - started,
                                spots=spots if arguments.jungfraujoch_spots else None,
                                self_described=described)
        yield end_message(series_id, unique, described)

    return run_series(arguments, series)


if __name__ == "__main__":
    sys.exit(main())
