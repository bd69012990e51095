# SPDX-License-Identifier: GPL-3.0-or-later
"""Safe decoding of ``bslz4`` blobs: bitshuffle + LZ4 with the 12-byte HDF5-filter header.

Format (bitshuffle's HDF5 filter 32008 chunk layout, used by DECTRIS detectors, MAX IV's
streaming-receiver and Jungfraujoch): a big-endian uint64 of the uncompressed byte count and a
big-endian uint32 block size in bytes, then for every block of ``block`` elements (the last
one shortened to a multiple of 8 elements) a big-endian uint32 compressed size and that many
LZ4 bytes, then the last ``n % 8`` elements copied raw.

Handing a malformed blob to the decompressor can crash the process (the header itself makes
PyPI's ``bitshuffle.decompress_lz4`` segfault), so the header and the whole block chain are
checked here first; only a blob whose every size adds up reaches bitshuffle.

The check allocates nothing that grows with the declared size: the block count is computed,
not listed, and a blob shorter than its blocks' smallest possible encoding (4 bytes of size
and at least 1 byte of LZ4 per block) is refused before the chain is walked, so a 12-byte blob
declaring a 64 MB image in 8-byte blocks costs no memory.
"""

import struct

import numpy as np

from om.lib.exceptions import OmInvalidDataError

HEADER = struct.Struct(">QI")
_BLOCK_SIZE = struct.Struct(">I")
_BLOCKED_MULTIPLE = 8  # bitshuffle works on multiples of 8 elements
_MIN_BLOCK_BYTES = _BLOCK_SIZE.size + 1  # a block's size word and at least one LZ4 byte
MAX_DECOMPRESSED_BYTES = (1 << 26) * 8
"""Largest image decoded, bytes: 2**26 pixels (4x a 16M detector) of 8 bytes, the sources'
pixel cap at their widest type."""


def _lz4_bound(size: int) -> int:
    # LZ4's worst case for incompressible input (LZ4_COMPRESSBOUND).
    return size + size // 255 + 16


def check_bslz4(blob: bytes | memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Validates a bslz4 blob against the image it must hold, without decompressing it.

    Returns:
        The block size in elements.

    Args:
        blob: the blob, header included.
        dtype: the image's element type.
        shape: the image's shape.

    Raises:
        OmInvalidDataError: one line saying what does not add up (the image larger than
            :data:`MAX_DECOMPRESSED_BYTES`, the header's byte count or block size, a blob too
            short for its blocks, a block's size, bytes left over).
    """
    dtype = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected > MAX_DECOMPRESSED_BYTES:
        raise OmInvalidDataError(f"bslz4 image {list(shape)} {dtype.str} of {expected} bytes is "
                                 f"larger than the {MAX_DECOMPRESSED_BYTES} bytes accepted")
    if len(blob) < HEADER.size:
        raise OmInvalidDataError(f"bslz4 blob of {len(blob)} bytes has no 12-byte header")
    total, block_bytes = HEADER.unpack_from(blob, 0)
    if total != expected:
        raise OmInvalidDataError(f"bslz4 header declares {total} bytes, the image "
                                 f"{list(shape)} {dtype.str} needs {expected}")
    if block_bytes == 0 or block_bytes % (dtype.itemsize * _BLOCKED_MULTIPLE):
        raise OmInvalidDataError(f"bslz4 block size of {block_bytes} bytes is not a multiple of "
                                 f"{_BLOCKED_MULTIPLE} elements of {dtype.itemsize} bytes")
    block = block_bytes // dtype.itemsize
    elements = total // dtype.itemsize
    last = (elements % block) - (elements % block) % _BLOCKED_MULTIPLE
    full_blocks = elements // block
    n_blocks = full_blocks + (1 if last else 0)
    leftover = (elements % _BLOCKED_MULTIPLE) * dtype.itemsize
    smallest = HEADER.size + n_blocks * _MIN_BLOCK_BYTES + leftover
    if len(blob) < smallest:
        raise OmInvalidDataError(f"bslz4 blob of {len(blob)} bytes cannot hold the {n_blocks} "
                                 f"blocks it declares (at least {smallest} bytes)")
    offset = HEADER.size
    for index in range(n_blocks):
        size = block if index < full_blocks else last
        if offset + _BLOCK_SIZE.size > len(blob):
            raise OmInvalidDataError(f"bslz4 blob truncated at block {index} of {n_blocks}")
        (compressed,) = _BLOCK_SIZE.unpack_from(blob, offset)
        offset += _BLOCK_SIZE.size
        if compressed == 0 or compressed > _lz4_bound(size * dtype.itemsize):
            raise OmInvalidDataError(f"bslz4 block {index} declares {compressed} compressed bytes")
        if offset + compressed > len(blob):
            raise OmInvalidDataError(f"bslz4 blob truncated in block {index} of {n_blocks}")
        offset += compressed
    if len(blob) - offset != leftover:
        raise OmInvalidDataError(f"bslz4 blob has {len(blob) - offset} bytes after its blocks, "
                                 f"expected {leftover}")
    return block


def decompress_bslz4(blob: bytes | memoryview, dtype: np.dtype,
                     shape: tuple[int, ...]) -> np.ndarray:
    """Decodes a bslz4 blob into an array of ``dtype`` and ``shape``, after :func:`check_bslz4`.

    Raises:
        OmInvalidDataError: when the blob does not hold such an array (nothing is decompressed).
        OmMissingDependencyError: when the ``bitshuffle`` package is not installed.
    """
    block = check_bslz4(blob, dtype, shape)
    try:
        import bitshuffle
    except ImportError:
        from om.lib.exceptions import OmMissingDependencyError

        raise OmMissingDependencyError("decoding bslz4 needs the 'bitshuffle' package")
    body = np.frombuffer(blob, dtype=np.uint8, offset=HEADER.size)
    try:
        return bitshuffle.decompress_lz4(body, tuple(shape), np.dtype(dtype), block)
    except (RuntimeError, ValueError) as error:  # corrupt LZ4 data inside valid framing
        raise OmInvalidDataError(f"bslz4 data does not decompress: {error}")


def compress_bslz4(array: np.ndarray, block_bytes: int = 8192) -> bytes:
    """Encodes an array as a bslz4 blob with its 12-byte header (for senders and tests)."""
    import bitshuffle

    block = max(_BLOCKED_MULTIPLE, block_bytes // array.dtype.itemsize)
    body = bitshuffle.compress_lz4(np.ascontiguousarray(array), block)
    return HEADER.pack(array.nbytes, block * array.dtype.itemsize) + body.tobytes()
