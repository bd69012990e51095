# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixed ranges for values taken from messages, and bounded decoding of JSON headers.

Every number a peer sends (frame and message numbers, timestamps, sizes, counts) is checked
here against a fixed range before it is used, and every count kept from input saturates at
:data:`MAX_COUNT` instead of growing past what msgpack (and a reader's int64) can carry.
The checks never convert a peer's integer to a float first: ``float(10**400)`` raises
``OverflowError``, which once dropped whole messages (or ended threads) instead of the one bad
field.

Message sizes: :data:`MAX_JSON_HEADER_BYTES` bounds every JSON header or notification; the
size of whole message parts is capped on the sockets
(:class:`om.lib.zmq_sockets.SizeLimitedConnection`).
"""

import json
import math
from typing import Any

from om.lib.exceptions import OmInvalidDataError

MAX_COUNT = 2**63 - 1
"""Largest count kept (problem counts, gaps): counts saturate here (an int64)."""
MAX_UINT64 = 2**64 - 1
"""Largest frame or message number accepted: the detectors' counters are uint64."""
MAX_JSON_HEADER_BYTES = 64 * 1024
"""Largest JSON header (slsReceiver module header, file notification) accepted, bytes: a
real one is below 2 kB."""
MAX_JSON_DEPTH = 16
"""Deepest nesting of maps and lists accepted in a JSON header (real ones: 3)."""
MAX_JSON_INT = MAX_UINT64
MIN_JSON_INT = -(2**63)
"""The integers a JSON header may hold: those msgpack (int64/uint64) can carry on."""


def saturating_add(count: int, increment: int) -> int:
    """``count + increment`` kept within 0 and :data:`MAX_COUNT` (negative increments
    count as 0)."""
    return min(MAX_COUNT, count + max(0, min(MAX_COUNT, increment)))


def is_int_in(value: Any, low: int, high: int) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) within ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number_in(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` (not a ``bool``) within ``low`` to
    ``high``; an integer too large for a float is compared exactly, never converted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return low <= value <= high


def number_or_none(value: Any, low: float = -math.inf, high: float = math.inf,
                   scale: float = 1.0) -> float | None:
    """``float(value) * scale`` when ``value`` is a number within ``low`` to ``high`` (before
    scaling) and the product is finite, else None."""
    if not is_number_in(value, low, high):
        return None
    try:
        result = float(value) * scale
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def _is_big_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and not MIN_JSON_INT <= value <= MAX_JSON_INT)


def _check_json_value(container: dict | list, depth: int, path: str,
                      ignored: list[str] | None) -> None:
    # Recursive over depth only, which is bounded by MAX_JSON_DEPTH.
    if depth >= MAX_JSON_DEPTH:
        raise OmInvalidDataError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    keys = container.keys() if isinstance(container, dict) else range(len(container))
    for key in list(keys):
        value = container[key]
        where = f"{path}/{key}" if path else str(key)
        if isinstance(value, (dict, list)):
            _check_json_value(value, depth + 1, where, ignored)
        elif _is_big_int(value):
            if ignored is None:
                raise OmInvalidDataError(f"'{where}' is an integer beyond 64 bits")
            container[key] = None
            ignored.append(f"'{where}' is an integer beyond 64 bits")


def parse_json_object(data: bytes | bytearray | memoryview, what: str,
                      max_bytes: int = MAX_JSON_HEADER_BYTES,
                      ignored: list[str] | None = None) -> dict[str, Any]:
    """Decodes a JSON object of at most ``max_bytes`` (UTF-8), nested at most
    :data:`MAX_JSON_DEPTH` levels, whose integers fit in 64 bits.

    Args:
        data: the encoded object.
        what: what it is, for the error message (e.g. "stream tcp://...: header").
        max_bytes: the size cap.
        ignored: when given, an integer beyond 64 bits does not refuse the object: it is
            replaced by None and one line naming its key path is appended here (a value that
            cannot be used is ignored, the rest of the message kept).

    Returns:
        The object (a dict).

    Raises:
        OmInvalidDataError: one line naming ``what`` and the reason: too long, not UTF-8 JSON
            (RecursionError, a number too long and every other decoder error included), not
            an object, too deep, or an integer beyond 64 bits (without ``ignored``).
    """
    if len(data) > max_bytes:
        raise OmInvalidDataError(f"{what} of {len(data)} bytes is longer than the {max_bytes} "
                                 "bytes accepted")
    try:
        content = json.loads(bytes(data))
    except (ValueError, RecursionError, MemoryError, OverflowError) as error:
        reason = str(error).splitlines()[0][:80] if str(error) else type(error).__name__
        raise OmInvalidDataError(f"{what} is not JSON: {reason}") from None
    if not isinstance(content, dict):
        raise OmInvalidDataError(f"{what} is JSON but not an object ({type(content).__name__})")
    try:
        _check_json_value(content, 0, "", ignored)
    except OmInvalidDataError as error:
        raise OmInvalidDataError(f"{what}: {error}") from None
    return content

