# SPDX-License-Identifier: GPL-3.0-or-later
"""msgpack encoding of arrays: the layout CrystFEL reads, and safe decoding of bad input."""

import msgpack
import numpy as np
import pytest

from om.lib.exceptions import OmInvalidDataError
from om.lib.serialization import (
    OutOfBandBuffers,
    decode_array,
    pack,
    pack_out_of_band,
    unpack,
    unpack_out_of_band,
)


def test_round_trip_keeps_dtype_shape_and_values():
    message = {"frame": np.arange(6, dtype="<f4").reshape(2, 3), "n": np.int64(4),
               "peaks": {"fs": np.array([1.5, 2.5])}, "id": "12"}
    decoded = unpack(pack(message))
    assert decoded["frame"].dtype == np.float32 and decoded["frame"].shape == (2, 3)
    np.testing.assert_array_equal(decoded["frame"], message["frame"])
    assert decoded["n"] == 4 and decoded["id"] == "12"
    np.testing.assert_array_equal(decoded["peaks"]["fs"], [1.5, 2.5])


def test_array_map_is_the_crystfel_layout():
    raw = msgpack.unpackb(pack({"data": np.zeros((2, 3), dtype="<f4")}), raw=False)
    assert raw["data"]["type"] == "<f4"
    assert raw["data"]["shape"] == [2, 3]
    assert isinstance(raw["data"]["data"], bytes) and len(raw["data"]["data"]) == 24


@pytest.mark.parametrize("payload", [
    b"\xc1garbage",
    msgpack.packb({"type": "<f4", "shape": [2, 2], "data": b"\x00" * 15}, use_bin_type=True),
    msgpack.packb({"type": "nonsense", "shape": [1], "data": b"\x00"}, use_bin_type=True),
    msgpack.packb({"type": "|O", "shape": [1], "data": b"\x00" * 8}, use_bin_type=True),
    msgpack.packb({"type": "<f4", "shape": [-1, -4], "data": b"\x00" * 16}, use_bin_type=True),
])
def test_bad_payloads_raise_one_error_type(payload):
    with pytest.raises(OmInvalidDataError):
        unpack(payload)


def test_a_negative_size_is_named():
    with pytest.raises(OmInvalidDataError, match=r"shape \[-1, -4\]"):
        decode_array({"type": "<f4", "shape": [-1, -4], "data": b"\x00" * 16})


def test_objects_without_msgpack_form_are_refused():
    with pytest.raises(TypeError):
        pack({"x": object()})


def test_empty_arrays_round_trip():
    for empty in (np.zeros(0, dtype=np.float64), np.zeros((0, 3), dtype="<f4")):
        decoded = unpack(pack({"peaks": empty}))["peaks"]
        assert decoded.shape == empty.shape and decoded.dtype == empty.dtype


# Out-of-band arrays (between MPI ranks) ----------------------------------------------------


def test_large_arrays_travel_out_of_band_without_copies():
    frame = np.arange(1024 * 64, dtype="<f4").reshape(64, 1024)  # 256 kB
    strided = np.arange(40000, dtype=">i4").reshape(200, 200)[:, ::2]  # not C-contiguous
    peaks = np.array([1.5, 2.5])  # small: stays in the payload
    payload, buffers = pack_out_of_band({"frame": frame, "strided": strided, "peaks": peaks,
                                         "empty": np.zeros(0)}, min_bytes=65536)
    assert len(payload) < 1000 and len(buffers) == 2
    assert np.shares_memory(np.frombuffer(buffers[0], dtype="<f4"), frame)  # sent from there
    received = [np.frombuffer(bytes(buffer), dtype=np.uint8) for buffer in buffers]
    decoded = unpack_out_of_band(payload, received)
    np.testing.assert_array_equal(decoded["frame"], frame)
    assert np.shares_memory(decoded["frame"], received[0])  # kept where it was received
    np.testing.assert_array_equal(decoded["strided"], strided)
    assert decoded["strided"].dtype == np.dtype(">i4")
    np.testing.assert_array_equal(decoded["peaks"], peaks)
    assert decoded["empty"].shape == (0,)
    # Without out-of-band arrays it is the plain format.
    assert unpack_out_of_band(pack({"peaks": peaks}), [])["peaks"].tolist() == [1.5, 2.5]


def _out_of_band_payload(index):
    return msgpack.packb({"frame": {"type": "<f4", "shape": [2, 2], "buffer": index}},
                         use_bin_type=True)


@pytest.mark.parametrize("payload, buffers, reason", [
    (_out_of_band_payload(1), [b"\x00" * 16], "names buffer 1; 1 buffers came"),
    (_out_of_band_payload(-1), [b"\x00" * 16], "names buffer -1"),
    (_out_of_band_payload("0"), [b"\x00" * 16], "names buffer '0'"),
    (_out_of_band_payload(True), [b"\x00" * 16], "names buffer True"),
    (_out_of_band_payload(0), [b"\x00" * 15], "needs 16 bytes, got 15"),
    (_out_of_band_payload(0), [], "names buffer 0; 0 buffers came"),
    (_out_of_band_payload(0), [b"\x00" * 16, b"\x00" * 4], "1 of the 2 buffers .* named by no"),
    (msgpack.packb([{"type": "<f4", "shape": [2, 2], "buffer": 0}] * 2, use_bin_type=True),
     [b"\x00" * 16], "names buffer 0"),  # one buffer cannot be two arrays
    (b"\xc1garbage", [], "malformed msgpack"),
])
def test_bad_out_of_band_messages_raise_one_error_type(payload, buffers, reason):
    with pytest.raises(OmInvalidDataError, match=reason):
        unpack_out_of_band(payload, buffers)


def test_buffers_wait_per_sender_and_cannot_pile_up():
    waiting = OutOfBandBuffers(max_waiting=2)
    assert waiting.add(1, b"a") and waiting.add(2, b"x") and waiting.add(1, b"b")
    assert not waiting.add(1, b"c")  # a third without its payload: the oldest goes
    assert waiting.take(1) == [b"b", b"c"]
    assert waiting.take(1) == []
    assert waiting.take(2) == [b"x"]
