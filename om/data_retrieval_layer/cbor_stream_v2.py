# SPDX-License-Identifier: GPL-3.0-or-later
"""Decoding of DECTRIS Stream V2 messages (DECTRIS SIMPLON 1.8+, PSI Jungfraujoch) into
Python values and numpy arrays.

The format (DECTRIS' public documentation, ``stream_v2/README.md`` and
``cbor/dectris-compression-tag.md`` of https://github.com/dectris/documentation):

* Each message is **one CBOR data item** (RFC 8949), a map of text keys whose ``type`` is
  ``"start"``, ``"image"`` or ``"end"`` (Jungfraujoch adds ``"calibration"``). Jungfraujoch
  prefixes every message with the self-described CBOR tag 55799 (cbor2 then returns immutable
  containers: ``frozendict`` and tuples, which every function here accepts).
* Images: ``data`` maps each channel name to a **multi-dimensional array**, tag 40 (row-major;
  tag 1040: column-major) holding ``[dimensions, typed array]`` (RFC 8746 section 3.1). The
  dimensions of a 2-D image are ``[rows, columns]`` = ``[image_size_y, image_size_x]``.
* A **typed array** (RFC 8746 section 2) is a tag from 64 to 87 around a byte string; the tag
  gives the element type: ``0b010_f_s_e_ll`` with ``f`` float, ``s`` signed, ``e`` little
  endian and ``2**ll`` bytes per integer element (16 << ll bits per float), e.g. 69 = uint16
  little endian, 70 = uint32 little endian, 85 = float32 little endian.
* The byte string may be a **compressed byte string**, tag 56500 holding
  ``[algorithm, element size, bytes]``. ``bslz4``: bitshuffle + LZ4 blocks in the HDF5 filter
  32008 framing (12-byte header: big-endian uint64 uncompressed bytes, big-endian uint32 block
  bytes; then per block a big-endian uint32 compressed size and the block). ``bszstd``
  (Jungfraujoch): the same framing with zstd blocks. DECTRIS' ``lz4`` (HDF5 LZ4 filter framing)
  is not decoded here (no installed library reads that framing): counted as
  ``unknown_compression``.
* Rationals (``start_time``, ``stop_time``, ``real_time`` of images) are ``[numerator,
  denominator]`` in seconds; ``series_date`` is an RFC 3339 date-time (tag 0).

Untrusted input: nothing here can crash the process or allocate without bound. cbor2 decodes
with a nesting limit, rejects duplicate and non-string map keys and trailing bytes; arrays
are checked (element count, byte counts, declared element size) before any decompression,
and compressed blobs are decoded only after their whole block chain adds up
(:func:`om.lib.bslz4.decompress_bslz4` for bslz4, :func:`check_bszstd` for bszstd).
Every failure raises :class:`StreamV2Error`, whose ``kind`` is the problem kind to count.
"""

import dataclasses
import datetime
import io
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2
import numpy as np

from om.lib.bslz4 import HEADER, decompress_bslz4
from om.lib.exceptions import OmInvalidDataError
from om.lib.input_limits import MAX_UINT64, is_int_in, number_or_none

BAD_CBOR = "bad_cbor"
BAD_MESSAGE = "bad_stream_message"
UNKNOWN_COMPRESSION = "unknown_compression"
BAD_COMPRESSED_DATA = "bad_compressed_data"
WRONG_SIZE = "wrong_size"

MAX_IMAGE_PIXELS = 1 << 26
"""Largest image accepted, in pixels (67 Mpixel; the largest detectors have ~20 Mpixel):
bounds the memory a declared size can make a rank allocate."""

MAX_SPOTS = 100_000
"""Most detector spots read from one image message (more: the spots are ignored)."""

_MAX_NESTING = 32
MAX_MAPS = 2 * MAX_SPOTS + 1024
"""Most CBOR maps one message may hold (spots as maps included): a payload of empty maps
would otherwise decode to ~60 bytes of Python objects per byte."""
_BLOCK_SIZE = struct.Struct(">I")
_TAG_SELF_DESCRIBED = 55799
_TAG_ROW_MAJOR = 40
_TAG_COLUMN_MAJOR = 1040
_TAG_COMPRESSED = 56500


class StreamV2Error(OmInvalidDataError):
    """A message that cannot be used, with the problem ``kind`` it counts under.

    Attributes:
        kind: ``bad_cbor``, ``bad_stream_message``, ``unknown_compression``,
            ``bad_compressed_data`` or ``wrong_size``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class CompressedBytes:
    """The content of tag 56500: a byte string still compressed.

    Attributes:
        algorithm: the compression algorithm (``"bslz4"``, ``"bszstd"``, ``"lz4"``...).
        element_size: the modifier: the bitshuffle element size in bytes for ``bslz4``.
        data: the compressed bytes.
    """

    algorithm: str
    element_size: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class TypedArray:
    """An RFC 8746 typed array, not decoded yet.

    Attributes:
        dtype: the element type, with its byte order (e.g. ``<u2``).
        payload: the raw bytes, or the compressed bytes that stand for them.
    """

    dtype: np.dtype
    payload: bytes | CompressedBytes


@dataclasses.dataclass(frozen=True)
class MultiDimArray:
    """An RFC 8746 multi-dimensional array (tag 40 or 1040), not decoded yet.

    Attributes:
        dimensions: the shape, outermost first.
        contents: the typed array (or a plain CBOR array, not accepted for image data).
        column_major: True for tag 1040.
    """

    dimensions: tuple[int, ...]
    contents: Any
    column_major: bool


def _typed_array_dtype(tag: int) -> np.dtype | None:
    # RFC 8746 section 2.1: tag = 0b010_f_s_e_ll.
    if not 64 <= tag <= 87:
        return None
    bits = tag - 64
    is_float, signed, little, size_code = bits >> 4, (bits >> 3) & 1, (bits >> 2) & 1, bits & 3
    order = "<" if little else ">"
    if is_float:
        if signed or size_code == 3:  # float128 has no portable numpy type
            return None
        return np.dtype(f"{order}f{2 << size_code}")
    if tag == 76:  # reserved (int8 little endian is tag 72)
        return None
    size = 1 << size_code
    return np.dtype(f"{order if size > 1 else '|'}{'i' if signed else 'u'}{size}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # A number a float can hold: 10**400 is an int, but float() of it raises OverflowError.
    return number_or_none(value) is not None


def _is_id(value: Any) -> bool:
    """A series or image number: an integer within 0 to 2**64 - 1."""
    return is_int_in(value, 0, MAX_UINT64)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _tag_hook(*args: Any) -> Any:
    # cbor2 5 calls tag_hook(decoder, tag), cbor2 6 calls tag_hook(tag, immutable).
    tag = next(arg for arg in args if isinstance(arg, cbor2.CBORTag))
    if tag.tag == _TAG_COMPRESSED:
        value = tag.value
        if not (_is_sequence(value) and len(value) == 3 and isinstance(value[0], str)
                and _is_int(value[1]) and isinstance(value[2], bytes)):
            raise StreamV2Error(BAD_MESSAGE, "tag 56500 must hold [algorithm (text), element "
                                             "size (integer), compressed bytes]")
        return CompressedBytes(value[0], value[1], value[2])
    dtype = _typed_array_dtype(tag.tag)
    if dtype is not None:
        if not isinstance(tag.value, (bytes, CompressedBytes)):
            raise StreamV2Error(BAD_MESSAGE, f"typed array tag {tag.tag} must hold a byte "
                                             f"string, got {type(tag.value).__name__}")
        return TypedArray(dtype, tag.value)
    if tag.tag in (_TAG_ROW_MAJOR, _TAG_COLUMN_MAJOR):
        value = tag.value
        if not (_is_sequence(value) and len(value) == 2 and _is_sequence(value[0])
                and all(_is_int(d) and d >= 0 for d in value[0])):
            raise StreamV2Error(BAD_MESSAGE, f"tag {tag.tag} must hold [[dimensions], array] "
                                             f"with non-negative integer dimensions")
        return MultiDimArray(tuple(value[0]), value[1], tag.tag == _TAG_COLUMN_MAJOR)
    return tag


def _decoder_options() -> dict[str, Any]:
    # The safety options of cbor2 6 (older versions lack some; deep nesting then ends in a
    # RecursionError, counted as bad_cbor all the same).
    wanted = {"max_depth": _MAX_NESTING, "allow_duplicate_keys": False,
              "strict_hashable_types": True}
    options = {}
    for key, value in wanted.items():
        try:
            cbor2.CBORDecoder(io.BytesIO(b""), **{key: value})
        except TypeError:
            continue
        options[key] = value
    return options


_DECODER_OPTIONS = _decoder_options()


def decode_message(data: bytes) -> Mapping[str, Any]:
    """Decodes one Stream V2 message: a CBOR map with a text ``type``.

    Arrays are returned undecoded (:class:`MultiDimArray`, :class:`TypedArray`,
    :class:`CompressedBytes`): :func:`decode_array` decodes those one needs.

    Args:
        data: the bytes of one ZeroMQ message.

    Returns:
        The message map (a ``dict``, or a ``frozendict`` under tag 55799).

    Raises:
        StreamV2Error: ``bad_cbor`` when the bytes are not exactly one well-formed CBOR item
            (or a date-time is malformed); ``bad_stream_message`` when the item is not a map
            with a text ``type`` or a tag 40/56500/typed array is malformed.
    """
    stream = io.BytesIO(data)
    maps_left = [MAX_MAPS]

    def count_maps(*args: Any) -> Any:
        # cbor2 5 calls object_hook(decoder, map), cbor2 6 object_hook(map, immutable).
        maps_left[0] -= 1
        if maps_left[0] < 0:
            raise StreamV2Error(BAD_CBOR, f"the message holds more than {MAX_MAPS} maps")
        return next(arg for arg in args if isinstance(arg, Mapping))

    decoder = cbor2.CBORDecoder(stream, tag_hook=_tag_hook, object_hook=count_maps,
                                **_DECODER_OPTIONS)
    try:
        message = decoder.decode()
    except StreamV2Error:
        raise
    except cbor2.CBORDecodeError as error:
        if isinstance(error.__cause__, StreamV2Error):
            raise error.__cause__ from None
        raise StreamV2Error(BAD_CBOR, f"not CBOR: {error}") from None
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError) as error:
        raise StreamV2Error(BAD_CBOR, f"not CBOR: {type(error).__name__}: {error}") from None
    if stream.tell() != len(data):
        raise StreamV2Error(BAD_CBOR, f"{len(data) - stream.tell()} bytes after the CBOR item "
                                      f"of {stream.tell()} bytes")
    if isinstance(message, cbor2.CBORTag) and message.tag == _TAG_SELF_DESCRIBED:
        message = message.value  # (cbor2 unwraps tag 55799 itself; older versions may not)
    if not isinstance(message, Mapping):
        raise StreamV2Error(BAD_MESSAGE, f"a message must be a CBOR map, got "
                                         f"{type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise StreamV2Error(BAD_MESSAGE, "the message has no text 'type'")
    return message


def check_bszstd(blob: bytes, itemsize: int, elements: int) -> int:
    """Checks a bszstd blob's header and block chain (bslz4's framing, zstd blocks).

    Returns:
        The block size in elements.

    Raises:
        StreamV2Error: ``wrong_size`` when the header's byte count is not ``elements *
            itemsize``; ``bad_compressed_data`` when the blocks do not add up.
    """
    if len(blob) < HEADER.size:
        raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd blob of {len(blob)} bytes has no "
                                                 f"12-byte header")
    total, block_bytes = HEADER.unpack_from(blob, 0)
    if total != elements * itemsize:
        raise StreamV2Error(WRONG_SIZE, f"bszstd header declares {total} bytes, the array "
                                        f"needs {elements * itemsize}")
    if block_bytes == 0 or block_bytes % (itemsize * 8):
        raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd block size of {block_bytes} bytes is "
                                                 f"not a multiple of 8 elements")
    block = block_bytes // itemsize
    last = (elements % block) - (elements % block) % 8
    count = elements // block + (1 if last else 0)
    offset = HEADER.size
    for index in range(count):
        size = (block if index < elements // block else last) * itemsize
        if offset + _BLOCK_SIZE.size > len(blob):
            raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd blob truncated at block {index} "
                                                     f"of {count}")
        (compressed,) = _BLOCK_SIZE.unpack_from(blob, offset)
        offset += _BLOCK_SIZE.size
        bound = size + (size >> 8) + ((131072 - size) >> 11 if size < 131072 else 0) + 64
        if compressed == 0 or compressed > bound:
            raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd block {index} declares "
                                                     f"{compressed} compressed bytes")
        if offset + compressed > len(blob):
            raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd blob truncated in block {index} "
                                                     f"of {count}")
        offset += compressed
    leftover = (elements % 8) * itemsize
    if len(blob) - offset != leftover:
        raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd blob has {len(blob) - offset} bytes "
                                                 f"after its blocks, expected {leftover}")
    return block


def _decompress(compressed: CompressedBytes, dtype: np.dtype,
                shape: tuple[int, ...]) -> np.ndarray:
    elements = math.prod(shape)
    if compressed.algorithm not in ("bslz4", "bszstd"):
        raise StreamV2Error(UNKNOWN_COMPRESSION, f"compression {compressed.algorithm!r} is not "
                                                 f"decoded here (bslz4, bszstd are)")
    if compressed.element_size != dtype.itemsize:
        raise StreamV2Error(WRONG_SIZE, f"{compressed.algorithm} element size "
                                        f"{compressed.element_size}, the typed array's is "
                                        f"{dtype.itemsize}")
    blob = compressed.data
    if len(blob) >= HEADER.size:
        total, _ = HEADER.unpack_from(blob, 0)
        if total != elements * dtype.itemsize:
            raise StreamV2Error(WRONG_SIZE, f"{compressed.algorithm} header declares {total} "
                                            f"bytes, the {list(shape)} {dtype.str} array needs "
                                            f"{elements * dtype.itemsize}")
    if compressed.algorithm == "bslz4":
        try:
            return decompress_bslz4(blob, dtype, shape)
        except OmInvalidDataError as error:
            raise StreamV2Error(BAD_COMPRESSED_DATA, str(error)) from None
    block = check_bszstd(blob, dtype.itemsize, elements)
    try:
        import bitshuffle

        decompress_zstd = bitshuffle.decompress_zstd
    except (ImportError, AttributeError):
        raise StreamV2Error(UNKNOWN_COMPRESSION, "bszstd needs a bitshuffle built with zstd") \
            from None
    body = np.frombuffer(blob, dtype=np.uint8, offset=HEADER.size)
    try:
        return decompress_zstd(body, tuple(shape), dtype, block)
    except (RuntimeError, ValueError) as error:
        raise StreamV2Error(BAD_COMPRESSED_DATA, f"bszstd data does not decompress: {error}") \
            from None


def decode_array(value: Any, *, ndim: int | None = None, what: str = "array") -> np.ndarray:
    """Decodes a multi-dimensional typed array (decompressing it if needed).

    Args:
        value: a :class:`MultiDimArray` from :func:`decode_message`.
        ndim: the number of dimensions required, if any.
        what: how to name the array in error messages (e.g. ``"data['default']"``).

    Returns:
        The array, of the typed array's element type in native byte order (uint16 for tag 69,
        ...) and of the declared shape; every dimension is at least 1.

    Raises:
        StreamV2Error: ``bad_stream_message`` when ``value`` is not a tag-40/1040 array of a
            typed array; ``wrong_size`` when the dimensions, byte count, element size or
            compressed size disagree (or exceed :data:`MAX_IMAGE_PIXELS`);
            ``unknown_compression``; ``bad_compressed_data``.
    """
    if not isinstance(value, MultiDimArray):
        raise StreamV2Error(BAD_MESSAGE, f"{what} is not a multi-dimensional array (tag 40)")
    if not isinstance(value.contents, TypedArray):
        raise StreamV2Error(BAD_MESSAGE, f"{what} does not hold a typed array (RFC 8746)")
    shape = value.dimensions
    if ndim is not None and len(shape) != ndim:
        raise StreamV2Error(WRONG_SIZE, f"{what} has {len(shape)} dimensions {list(shape)}, "
                                        f"expected {ndim}")
    if any(d < 1 for d in shape):
        raise StreamV2Error(WRONG_SIZE, f"{what} has an empty dimension {list(shape)}")
    elements = math.prod(shape)
    if elements > MAX_IMAGE_PIXELS:
        raise StreamV2Error(WRONG_SIZE, f"{what} declares {list(shape)}: {elements} elements, "
                                        f"more than the {MAX_IMAGE_PIXELS} accepted")
    dtype = value.contents.dtype
    payload = value.contents.payload
    storage = tuple(reversed(shape)) if value.column_major else shape
    if isinstance(payload, CompressedBytes):
        array = _decompress(payload, dtype, storage)
    else:
        if len(payload) != elements * dtype.itemsize:
            raise StreamV2Error(WRONG_SIZE, f"{what} holds {len(payload)} bytes, {list(shape)} "
                                            f"{dtype.str} needs {elements * dtype.itemsize}")
        array = np.frombuffer(payload, dtype=dtype).reshape(storage)
    if value.column_major:
        array = array.T
    if not dtype.isnative and dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array


def rational_seconds(value: Any) -> float:
    """Returns a Stream V2 rational ``[numerator, denominator]`` as a float (s).

    Raises:
        ValueError: when ``value`` is not two integers with a positive denominator.
    """
    if not (_is_sequence(value) and len(value) == 2 and _is_int(value[0]) and _is_int(value[1])
            and value[1] > 0):
        raise ValueError(f"not a rational [numerator, denominator > 0]: {value!r}"[:120])
    return value[0] / value[1]


@dataclasses.dataclass(frozen=True)
class StartInfo:
    """What om keeps of a start message (fields absent or malformed are None).

    Attributes:
        series_id: the series number.
        series_unique_id: the series' unique id (text).
        incident_energy: photon energy, eV.
        detector_distance: sample-detector distance, m (Jungfraujoch; DECTRIS only when sent).
        beam_center_x, beam_center_y: where the direct beam hits the detector, pixels.
        pixel_size_x, pixel_size_y: pixel size, m.
        image_size_x, image_size_y: image width and height, pixels.
        number_of_images: images in the series.
        channels: names of the active channels, in order.
    """

    series_id: int
    series_unique_id: str | None = None
    incident_energy: float | None = None
    detector_distance: float | None = None
    beam_center_x: float | None = None
    beam_center_y: float | None = None
    pixel_size_x: float | None = None
    pixel_size_y: float | None = None
    image_size_x: int | None = None
    image_size_y: int | None = None
    number_of_images: int | None = None
    channels: tuple[str, ...] | None = None


_START_NUMBERS = ("incident_energy", "detector_distance", "beam_center_x", "beam_center_y",
                  "pixel_size_x", "pixel_size_y")
_POSITIVE = ("incident_energy", "detector_distance", "pixel_size_x", "pixel_size_y")
_START_INTEGERS = ("image_size_x", "image_size_y", "number_of_images")


def _series_id(message: Mapping[str, Any], required: bool = True) -> int | None:
    value = message.get("series_id")
    if value is None and not required:
        return None
    if not _is_id(value):
        raise StreamV2Error(BAD_MESSAGE, f"{message['type']} message: 'series_id' must be an "
                                         f"integer within 0 to 2**64 - 1, got {value!r}"[:160])
    return value


def parse_start(message: Mapping[str, Any]) -> tuple[StartInfo, list[str]]:
    """Reads a start message.

    Returns:
        The start values, and one line per optional field ignored for its type or value.

    Raises:
        StreamV2Error: ``bad_stream_message`` when ``series_id`` is missing or not an integer.
    """
    series_id = _series_id(message)
    fields: dict[str, Any] = {}
    ignored: list[str] = []
    for key in _START_NUMBERS + _START_INTEGERS + ("series_unique_id", "channels"):
        if key not in message or message[key] is None:
            continue
        value = message[key]
        if key in _START_NUMBERS:
            good = _is_number(value) and (key not in _POSITIVE or value > 0)
            value = float(value) if good else value
        elif key in _START_INTEGERS:
            good = is_int_in(value, 0 if key == "number_of_images" else 1, MAX_UINT64)
        elif key == "channels":
            good = _is_sequence(value) and all(isinstance(v, str) for v in value)
            value = tuple(value) if good else value
        else:
            good = isinstance(value, str)
        if good:
            fields[key] = value
        else:
            ignored.append(f"start message of series {series_id}: {key} = {value!r}"[:160])
    return StartInfo(series_id=series_id, **fields), ignored


def _spot_table(value: Any) -> dict[str, np.ndarray]:
    if not _is_sequence(value):
        raise ValueError(f"not an array but {type(value).__name__}")
    if len(value) > 3 * MAX_SPOTS:
        raise ValueError(f"{len(value)} entries, more than {MAX_SPOTS} spots")
    if all(isinstance(spot, Mapping) for spot in value):  # [{x, y, I}, ...]
        columns: list[list[float]] = [[], [], []]
        for spot in value:
            intensity = spot.get("I", spot.get("intensity"))
            numbers = (spot.get("x"), spot.get("y"), intensity)
            if not all(_is_number(n) for n in numbers):
                raise ValueError("a spot without numeric x, y and I")
            for column, number in zip(columns, numbers):
                column.append(float(number))
    elif len(value) % 3 == 0 and all(_is_number(n) for n in value):  # [x, y, I, x, y, I...]
        flat = np.asarray(value, dtype=np.float64).reshape(-1, 3)
        columns = [flat[:, 0], flat[:, 1], flat[:, 2]]
    else:
        raise ValueError("neither maps {x, y, I} nor numbers x, y, I")
    return {"fs": np.asarray(columns[0], dtype=np.float64),
            "ss": np.asarray(columns[1], dtype=np.float64),
            "intensity": np.asarray(columns[2], dtype=np.float64)}


@dataclasses.dataclass
class ImageInfo:
    """A decoded image message.

    Attributes:
        series_id: the series number.
        image_id: the image number within the series.
        series_unique_id: the series' unique id, if sent.
        channel: the channel whose array ``image`` is.
        image: the 2-D image, (image_size_y, image_size_x), of the typed array's type.
        timestamp: ``series_date`` + ``start_time``, s since the epoch, or None when the
            message does not carry both.
        spots: Jungfraujoch's spots (``fs``, ``ss``, ``intensity``: float64 (n,) arrays,
            pixels and photons), or None when the message has none.
        ignored: one line per optional field ignored for its type or value.
    """

    series_id: int
    image_id: int
    series_unique_id: str | None
    channel: str
    image: np.ndarray
    timestamp: float | None
    spots: dict[str, np.ndarray] | None
    ignored: list[str]


def parse_image(message: Mapping[str, Any], channel: str | None = None) -> ImageInfo:
    """Reads an image message and decodes the image of one channel.

    Args:
        message: the map from :func:`decode_message`, of type ``image``.
        channel: the channel to decode (None: the first of ``data``).

    Raises:
        StreamV2Error: ``bad_stream_message`` when ``series_id``, ``image_id`` or ``data`` is
            missing or of the wrong type, or ``channel`` is not in ``data``; the errors of
            :func:`decode_array` for the image.
    """
    series_id = _series_id(message)
    image_id = message.get("image_id")
    if not _is_id(image_id):
        raise StreamV2Error(BAD_MESSAGE, f"image message of series {series_id}: 'image_id' must "
                                         f"be an integer within 0 to 2**64 - 1, got "
                                         f"{image_id!r}"[:160])
    where = f"image {series_id}:{image_id}"
    data = message.get("data")
    if not isinstance(data, Mapping) or not data:
        raise StreamV2Error(BAD_MESSAGE, f"{where}: 'data' must be a non-empty map of channels")
    if channel is None:
        channel = next(iter(data))
    elif channel not in data:
        names = ", ".join(repr(name) for name in list(data)[:8])
        raise StreamV2Error(BAD_MESSAGE, f"{where}: no channel {channel!r} (channels: {names})")
    image = decode_array(data[channel], ndim=2, what=f"{where}: data[{channel!r}]")
    ignored: list[str] = []
    unique_id = message.get("series_unique_id")
    if unique_id is not None and not isinstance(unique_id, str):
        ignored.append(f"{where}: series_unique_id = {unique_id!r}"[:160])
        unique_id = None
    timestamp = None
    if "series_date" in message and "start_time" in message:
        date = message["series_date"]
        try:
            if not isinstance(date, datetime.datetime):
                raise ValueError(f"not a date-time: {date!r}"[:80])  # noqa: TRY004 (a value)
            if date.tzinfo is None:
                date = date.replace(tzinfo=datetime.timezone.utc)
            timestamp = date.timestamp() + rational_seconds(message["start_time"])
        except (ValueError, OverflowError) as error:
            ignored.append(f"{where}: series_date/start_time: {error}")
    spots = None
    if message.get("spots") is not None:
        try:
            spots = _spot_table(message["spots"])
        except (ValueError, TypeError, OverflowError) as error:
            ignored.append(f"{where}: spots: {error}")
    return ImageInfo(series_id=series_id, image_id=image_id, series_unique_id=unique_id,
                     channel=channel, image=image, timestamp=timestamp, spots=spots,
                     ignored=ignored)


def parse_end(message: Mapping[str, Any]) -> int | None:
    """Reads an end message; returns its ``series_id`` (None when absent).

    Raises:
        StreamV2Error: ``bad_stream_message`` when ``series_id`` is not an integer.
    """
    return _series_id(message, required=False)
