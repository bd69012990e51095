# SPDX-License-Identifier: GPL-3.0-or-later
"""msgpack encoding of arrays: the layout CrystFEL reads, and safe decoding of bad input."""

import msgpack
import numpy as np
import pytest

from om.lib.exceptions import OmInvalidDataError
from om.lib.serialization import pack, unpack


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
])
def test_bad_payloads_raise_one_error_type(payload):
    with pytest.raises(OmInvalidDataError):
        unpack(payload)


def test_objects_without_msgpack_form_are_refused():
    with pytest.raises(TypeError):
        pack({"x": object()})


def test_empty_arrays_round_trip():
    for empty in (np.zeros(0, dtype=np.float64), np.zeros((0, 3), dtype="<f4")):
        decoded = unpack(pack({"peaks": empty}))["peaks"]
        assert decoded.shape == empty.shape and decoded.dtype == empty.dtype
