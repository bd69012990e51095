# SPDX-License-Identifier: GPL-3.0-or-later
"""msgpack encoding of monitor messages, numpy arrays included.

Arrays travel as msgpack maps ``{"type": dtype.str, "shape": [...], "data": <bin>}``: the
layout OnDA used and CrystFEL's indexamajig reads (``libcrystfel/src/image-msgpack.c``: ``type``
is a numpy dtype string such as ``'<f4'``, ``shape`` is ``[ss, fs]`` for images, ``data`` the
row-major bytes). Nothing here ever unpickles: decoding only builds numpy arrays from bytes.
"""

from typing import Any

import msgpack
import numpy as np

from om.lib.exceptions import OmInvalidDataError

_ARRAY_KEYS = frozenset(("type", "shape", "data"))


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """Turns a numpy array into its msgpack map.

    Args:
        array: any numeric array (any shape; copied only if not C-contiguous).

    Returns:
        ``{"type": dtype.str, "shape": list of int, "data": memoryview of the bytes}``.

    Raises:
        OmInvalidDataError: for object or structured dtypes, which have no portable bytes.
    """
    if array.dtype.hasobject or array.dtype.fields is not None:
        raise OmInvalidDataError(f"cannot encode an array of dtype {array.dtype}")
    contiguous = np.ascontiguousarray(array)
    # A memoryview of an empty array cannot be cast to bytes: an empty array has no bytes.
    data = memoryview(contiguous).cast("B") if contiguous.size else b""
    return {"type": contiguous.dtype.str, "shape": list(contiguous.shape), "data": data}


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


def decode_array(message_map: dict[str, Any]) -> np.ndarray:
    """Turns an array map back into a read-only numpy array without copying its bytes.

    Args:
        message_map: a map with the keys ``type``, ``shape`` and ``data``.

    Returns:
        The array, with the dtype and shape the map declares.

    Raises:
        OmInvalidDataError: when the dtype is unknown or the byte count does not match the shape.
    """
    try:
        dtype = np.dtype(message_map["type"])
        shape = tuple(int(n) for n in message_map["shape"])
    except (TypeError, ValueError) as error:
        raise OmInvalidDataError(f"bad array map (type={message_map.get('type')!r}): {error}")
    if dtype.hasobject:
        raise OmInvalidDataError(f"array map declares the object dtype {dtype.str!r}")
    data = message_map["data"]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != expected:
        size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else "no"
        raise OmInvalidDataError(
            f"array map of type {dtype.str} and shape {list(shape)} needs {expected} bytes, "
            f"got {size}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _object_hook(message_map: dict[Any, Any]) -> Any:
    if message_map.keys() == _ARRAY_KEYS:
        return decode_array(message_map)
    return message_map


def pack(obj: Any) -> bytes:
    """Encodes ``obj`` (maps, lists, numbers, strings, numpy arrays and scalars) as msgpack.

    Raises:
        TypeError: for objects msgpack cannot represent (never falls back to pickle).
    """
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(payload: bytes | memoryview) -> Any:
    """Decodes a msgpack payload made by :func:`pack`, array maps becoming numpy arrays.

    Raises:
        OmInvalidDataError: when the payload is not valid msgpack or an array map is bad.
    """
    try:
        return msgpack.unpackb(payload, raw=False, object_hook=_object_hook, strict_map_key=False)
    except OmInvalidDataError:
        raise
    except Exception as error:  # msgpack raises several unrelated types on bad input
        raise OmInvalidDataError(f"malformed msgpack payload: {type(error).__name__}: {error}")
