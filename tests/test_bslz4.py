# SPDX-License-Identifier: GPL-3.0-or-later
"""bslz4 decoding: exact on good blobs, a clean error (never a crash) on bad ones."""

import struct

import numpy as np
import pytest

from om.lib.bslz4 import HEADER, compress_bslz4, decompress_bslz4
from om.lib.exceptions import OmInvalidDataError


@pytest.mark.parametrize("dtype, shape", [("<u2", (512, 1024)), ("<u4", (100, 37)),
                                          ("<f4", (3, 5)), ("<i4", (1, 1001))])
def test_round_trip_is_exact(dtype, shape):
    image = np.random.default_rng(1).integers(0, 3000, shape).astype(dtype)
    np.testing.assert_array_equal(decompress_bslz4(compress_bslz4(image), dtype, shape), image)


def test_header_layout_is_the_hdf5_filter_one():
    image = np.arange(4096, dtype="<u2")
    total, block = HEADER.unpack_from(compress_bslz4(image, block_bytes=8192))
    assert (total, block) == (8192, 8192)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:8], "no 12-byte header"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:-1], "truncated|bytes after its blocks"),
    (lambda b: struct.pack(">QI", 999, 8192) + b[12:], "declares 999 bytes"),
    (lambda b: b[:8] + struct.pack(">I", 6) + b[12:], "block size of 6 bytes"),
    (lambda b: b[:12] + struct.pack(">I", 0xFFFFFF) + b[16:], "compressed bytes"),
    (lambda b: b + b"\0\0", "bytes after its blocks"),
])
def test_bad_blobs_raise_one_line_errors(damage, message):
    blob = compress_bslz4(np.random.default_rng(2).integers(0, 100, (64, 64)).astype("<u2"))
    with pytest.raises(OmInvalidDataError, match=message):
        decompress_bslz4(damage(blob), "<u2", (64, 64))


def test_corrupt_lz4_inside_valid_framing_does_not_crash():
    blob = bytearray(compress_bslz4(np.arange(64 * 64, dtype="<u2").reshape(64, 64)))
    for position in range(16, len(blob), 7):
        blob[position] ^= 0xFF
    try:
        decompress_bslz4(bytes(blob), "<u2", (64, 64))
    except OmInvalidDataError:
        pass  # an error or garbage pixels, but the process lives
