# SPDX-License-Identifier: GPL-3.0-or-later
"""msgpack encoding of monitor messages, numpy arrays included.

Arrays travel as msgpack maps ``{"type": dtype.str, "shape": [...], "data": <bin>}``: the
layout OnDA used and CrystFEL's indexamajig reads (``libcrystfel/src/image-msgpack.c``: ``type``
is a numpy dtype string such as ``'<f4'``, ``shape`` is ``[ss, fs]`` for images, ``data`` the
row-major bytes). Nothing here ever unpickles: decoding only builds numpy arrays from bytes.

:func:`unpack` decodes what came over a socket, so it bounds what a payload can make: at most
:data:`MAX_CONTAINERS` maps and arrays in all, maps of at most :data:`MAX_MAP_LEN` entries,
arrays of at most :data:`MAX_ARRAY_LEN` items (a 4 MB payload of empty maps once decoded to
350 MB of Python objects).

Between MPI ranks, large arrays (calibrated frames, 4 MB for a JUNGFRAU 1M) can travel *out of
band* (:func:`pack_out_of_band`): the msgpack payload then holds ``{"type", "shape", "buffer":
index}`` and the array's bytes go as a message of their own, sent from the array's memory and
received into the array the collecting rank keeps, so neither side copies them into or out of
the payload (:class:`OutOfBandBuffers` collects them on the receiving side).
"""

import collections
import math
from typing import Any, Sequence

import msgpack
import numpy as np

from om.lib.exceptions import OmInvalidDataError

MAX_CONTAINERS = 1 << 16
"""Most maps and arrays, in all, one payload decoded by :func:`unpack` may hold."""
MAX_MAP_LEN = 1 << 16
"""Most entries of one map decoded by :func:`unpack`."""
MAX_ARRAY_LEN = 1 << 20
"""Most items of one array decoded by :func:`unpack` (numbers in bulk travel as array maps)."""

_ARRAY_KEYS = frozenset(("type", "shape", "data"))
_BUFFER_KEYS = frozenset(("type", "shape", "buffer"))


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
        OmInvalidDataError: when the dtype is unknown, a size is negative or the byte count does
            not match the shape.
    """
    try:
        dtype = np.dtype(message_map["type"])
        shape = tuple(int(n) for n in message_map["shape"])
    except (TypeError, ValueError) as error:
        raise OmInvalidDataError(f"bad array map (type={message_map.get('type')!r}): {error}")
    if dtype.hasobject:
        raise OmInvalidDataError(f"array map declares the object dtype {dtype.str!r}")
    if any(n < 0 for n in shape):  # two negative sizes would give a positive byte count
        raise OmInvalidDataError(f"array map declares the shape {list(shape)}")
    data = message_map["data"]
    # math.prod: exact for any declared shape, and ~40x faster than np.prod on a tuple (this
    # runs for every array of every result the collecting rank receives).
    expected = math.prod(shape) * dtype.itemsize
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


class _ContainerBudget:
    """Counts the maps and arrays one payload makes; raises past :data:`MAX_CONTAINERS`."""

    def __init__(self) -> None:
        self.left = MAX_CONTAINERS

    def _spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise OmInvalidDataError(f"msgpack payload holds more than {MAX_CONTAINERS} maps "
                                     "and arrays")

    def object_hook(self, message_map: dict[Any, Any]) -> Any:
        self._spend()
        return _object_hook(message_map)

    def list_hook(self, items: list[Any]) -> list[Any]:
        self._spend()
        return items


def unpack(payload: bytes | memoryview) -> Any:
    """Decodes a msgpack payload made by :func:`pack`, array maps becoming numpy arrays.

    Raises:
        OmInvalidDataError: when the payload is not valid msgpack, an array map is bad, or the
            payload holds more maps and arrays, or longer ones, than the limits above.
    """
    budget = _ContainerBudget()
    try:
        return msgpack.unpackb(payload, raw=False, object_hook=budget.object_hook,
                               list_hook=budget.list_hook, strict_map_key=False,
                               max_map_len=MAX_MAP_LEN, max_array_len=MAX_ARRAY_LEN)
    except OmInvalidDataError:
        raise
    except Exception as error:  # msgpack raises several unrelated types on bad input
        raise OmInvalidDataError(f"malformed msgpack payload: {type(error).__name__}: {error}")


def pack_out_of_band(obj: Any, min_bytes: int) -> tuple[bytes, list[memoryview]]:
    """Encodes ``obj`` like :func:`pack`, except arrays of at least ``min_bytes`` bytes.

    Each such array becomes ``{"type": dtype.str, "shape": [...], "buffer": i}`` in the payload
    and its bytes the ``i``-th buffer returned: a memoryview of the array itself (of a
    contiguous copy when it is not C-contiguous), which keeps it alive.

    Returns:
        (msgpack payload, the buffers in order).

    Raises:
        TypeError: for objects msgpack cannot represent.
        OmInvalidDataError: for arrays of object or structured dtypes.
    """
    buffers: list[memoryview] = []

    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.nbytes >= min_bytes and value.size:
            encoded = encode_array(value)
            buffers.append(encoded.pop("data"))
            encoded["buffer"] = len(buffers) - 1
            return encoded
        return _default(value)

    return msgpack.packb(obj, default=default, use_bin_type=True), buffers


def unpack_out_of_band(payload: bytes | bytearray | memoryview,
                       buffers: Sequence[bytes | bytearray | memoryview]) -> Any:
    """Decodes a payload of :func:`pack_out_of_band` with its buffers, received in order.

    The arrays are numpy views of the buffers (no copy).

    Raises:
        OmInvalidDataError: when the payload is not valid msgpack, an array map is bad, a
            buffer index is not one of ``buffers``, a buffer's size does not match its array's
            dtype and shape, or a buffer is left unused.
    """
    used: set[int] = set()

    def hook(message_map: dict[Any, Any]) -> Any:
        if message_map.keys() == _BUFFER_KEYS:
            index = message_map["buffer"]
            if not isinstance(index, int) or isinstance(index, bool) or not (
                    0 <= index < len(buffers)) or index in used:
                raise OmInvalidDataError(f"array map names buffer {index!r}; "
                                         f"{len(buffers)} buffers came with the message")
            used.add(index)
            return decode_array({"type": message_map["type"], "shape": message_map["shape"],
                                 "data": memoryview(buffers[index]).cast("B")})
        return _object_hook(message_map)

    try:
        decoded = msgpack.unpackb(payload, raw=False, object_hook=hook, strict_map_key=False)
    except OmInvalidDataError:
        raise
    except Exception as error:  # msgpack raises several unrelated types on bad input
        raise OmInvalidDataError(f"malformed msgpack payload: {type(error).__name__}: {error}")
    if len(used) != len(buffers):
        raise OmInvalidDataError(f"{len(buffers) - len(used)} of the {len(buffers)} buffers "
                                 "that came with the message are named by no array")
    return decoded


class OutOfBandBuffers:
    """The out-of-band buffers received from each sender, waiting for their payload.

    A sender sends a message's buffers first, then its payload; messages from one sender arrive
    in order (MPI's non-overtaking rule), so the buffers waiting when a payload arrives are that
    payload's.

    Args:
        max_waiting: the most buffers kept per sender; beyond, the oldest is dropped (a sender
            that never sends the payload cannot fill the memory).
    """

    def __init__(self, max_waiting: int = 8) -> None:
        self._max_waiting = max_waiting
        self._waiting: dict[int, collections.deque] = {}

    def add(self, sender: int, buffer: bytes | bytearray | memoryview | np.ndarray) -> bool:
        """Keeps one buffer received from ``sender``; returns False when the oldest waiting
        buffer of ``sender`` had to be dropped for it."""
        waiting = self._waiting.setdefault(sender, collections.deque())
        kept_all = len(waiting) < self._max_waiting
        if not kept_all:
            waiting.popleft()
        waiting.append(buffer)
        return kept_all

    def take(self, sender: int) -> list:
        """Returns (and forgets) the buffers of ``sender``, in the order received."""
        return list(self._waiting.pop(sender, ()))
