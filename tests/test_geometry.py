# SPDX-License-Identifier: GPL-3.0-or-later
"""om.lib.geometry: CrystFEL geometry loading, pixel maps, assembly, bad pixel maps."""

import math

import h5py
import numpy as np
import pytest

from om.lib.exceptions import OmConfigurationError
from om.lib.geometry import assemble, load_bad_pixel_map, load_geometry, slab_to_assembled

GEOMETRY_4M_NAME = "jungfrau4M_jungfraujoch.geom"


def _write(tmp_path, text, name="test.geom"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _panel(name, min_fs, max_fs, min_ss, max_ss, cx, cy, fs="+1.0x +0.0y", ss="+0.0x +1.0y"):
    return (f"{name}/min_fs = {min_fs}\n{name}/max_fs = {max_fs}\n{name}/min_ss = {min_ss}\n"
            f"{name}/max_ss = {max_ss}\n{name}/corner_x = {cx}\n{name}/corner_y = {cy}\n"
            f"{name}/fs = {fs}\n{name}/ss = {ss}\n")


HEADER = "res = 10000\nclen = 0.2\nphoton_energy = 9000\nadu_per_photon = 1\n"


@pytest.fixture(scope="module")
def geometry(geometry_1m):
    return load_geometry(geometry_1m)


def test_real_1m_geometry_loads(geometry):
    assert geometry.slab_shape == (1024, 1024)
    assert len(geometry.panels) == 16
    assert all(p.max_fs - p.min_fs == 255 and p.max_ss - p.min_ss == 255 for p in geometry.panels)
    assert geometry.pixel_size_m == pytest.approx(75e-6, rel=1e-6)
    assert geometry.clen_m == pytest.approx(0.1)
    assert geometry.photon_energy_ev == pytest.approx(12000.0)
    for name in ("x", "y", "radius"):
        array = getattr(geometry, name)
        assert array.dtype == np.float32 and array.shape == (1024, 1024)
        assert np.all(np.isfinite(array))
    assert geometry.assembled_row.dtype == np.int32 and geometry.assembled_col.dtype == np.int32
    assert geometry.panel_rectangles[0] == (0, 255, 512, 767)  # p2a1, first in the file


def test_pixel_maps_are_at_pixel_centres(geometry):
    # p1a1: corner (-591.259758, -530.970437), fs = +1x -0.000641y, ss = +0.000641x +1y.
    x = -591.259758 + 0.5 * 1.0 + 0.5 * 0.000641
    y = -530.970437 + 0.5 * -0.000641 + 0.5 * 1.0
    assert geometry.x[0, 0] == pytest.approx(x, abs=1e-4)
    assert geometry.y[0, 0] == pytest.approx(y, abs=1e-4)
    assert geometry.radius[0, 0] == pytest.approx(math.hypot(x, y), rel=1e-6)


def test_radius_minimum_is_near_the_beam(geometry):
    ss, fs = np.unravel_index(np.argmin(geometry.radius), geometry.slab_shape)
    # The beam passes between the two modules, about 18 pixels from each.
    assert geometry.radius[ss, fs] < 20.0
    assert ss in (511, 512)
    assert abs(geometry.x[ss, fs]) < 1.0
    col, row = geometry.beam_center_in_assembled
    assert 0 <= col < geometry.assembled_shape[1] and 0 <= row < geometry.assembled_shape[0]
    beam_col, beam_row = slab_to_assembled([fs], [ss], geometry)
    assert math.hypot(beam_col[0] - col, beam_row[0] - row) == pytest.approx(
        float(geometry.radius[ss, fs]), abs=1.5)


def test_assembled_shape_and_orientation(geometry):
    height, width = geometry.assembled_shape
    # 1024 pixels plus the gaps between ASICs (2 px) and modules (~38 px).
    assert 1024 < height < 1100 and 1024 < width < 1100
    # Lab +y is up: the second module (y > 0, rows 512-1023 of the slab) is drawn above.
    assert geometry.assembled_row[512:].max() < geometry.assembled_row[:512].min()
    # Lab +x is to the right: the column follows x.
    row = 600
    assert np.all(np.diff(geometry.assembled_col[row]) > 0)
    assert np.all(np.diff(geometry.x[row]) > 0)


def test_assemble_puts_every_slab_pixel_once(geometry):
    slab = np.arange(1024 * 1024, dtype=np.float64).reshape(1024, 1024)
    image = assemble(slab, geometry, out=np.empty(geometry.assembled_shape, np.float64))
    filled = np.isfinite(image)
    assert filled.sum() == slab.size
    assert np.array_equal(np.sort(image[filled]), slab.ravel())
    assert np.array_equal(image[geometry.assembled_row, geometry.assembled_col], slab)
    flat = geometry.assembled_row.astype(np.int64) * geometry.assembled_shape[1] + geometry.assembled_col
    assert np.unique(flat).size == slab.size
    default = assemble(slab.astype(np.float32), geometry)
    assert default.dtype == np.float32 and default.shape == geometry.assembled_shape
    assert np.isnan(default[~filled]).all()
    zero_filled = assemble(slab.astype(np.float32), geometry, fill=0.0)
    assert zero_filled[~filled].sum() == 0.0
    with pytest.raises(ValueError):
        assemble(np.zeros((10, 10)), geometry)


def test_slab_to_assembled_matches_the_index_maps(geometry):
    rng = np.random.default_rng(1)
    fs = rng.integers(0, 1024, 500)
    ss = rng.integers(0, 1024, 500)
    col, row = slab_to_assembled(fs, ss, geometry)
    assert np.array_equal(np.floor(col + 0.5).astype(int), geometry.assembled_col[ss, fs])
    assert np.array_equal(np.floor(row + 0.5).astype(int), geometry.assembled_row[ss, fs])
    # Fractional positions move continuously inside a panel.
    col2, row2 = slab_to_assembled(fs[:1] + 0.25, ss[:1], geometry)
    assert col2[0] - col[0] == pytest.approx(0.25) and row2[0] == row[0]
    outside_col, _ = slab_to_assembled([-3.0, 2000.0], [5.0, 5.0], geometry)
    assert np.isnan(outside_col).all()


def test_flat_index_is_the_row_and_column_in_one(geometry):
    rows, cols = geometry.assembled_row, geometry.assembled_col
    expected = np.where(rows >= 0, rows.astype(np.int64) * geometry.assembled_shape[1] + cols, -1)
    np.testing.assert_array_equal(geometry.assembled_flat_index, expected)
    assert geometry.assembled_flat_index.shape == geometry.slab_shape


def test_4m_geometry_bad_regions_and_coffset(geometry_1m):
    path = geometry_1m.parent / GEOMETRY_4M_NAME
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    geometry = load_geometry(path)
    assert geometry.slab_shape == (2164, 2068)
    assert geometry.clen_m == pytest.approx(0.075)
    assert geometry.coffset_m == pytest.approx(-1e-6)
    assert geometry.photon_energy_ev == pytest.approx(12400.0)
    assert geometry.bad_region_mask.dtype == np.uint8
    assert not geometry.bad_region_mask[:, 1030:1038].any()
    assert not geometry.bad_region_mask[514:550].any()
    assert geometry.bad_region_mask[0, 0] == 1 and geometry.bad_region_mask[600, 600] == 1
    assert geometry.radius.min() < 1.0


def test_rotated_panels_are_assembled(tmp_path):
    # Panel a: ss along +x, fs along -y (rotated 90 degrees); panel b: rotated 30 degrees.
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    text = (HEADER + _panel("a", 0, 9, 0, 4, 20.0, 30.0, fs="+0.0x -1.0y", ss="+1.0x +0.0y")
            + _panel("b", 0, 9, 5, 9, -40.0, -40.0, fs=f"{c:+.6f}x {s:+.6f}y",
                     ss=f"{-s:+.6f}x {c:+.6f}y"))
    geometry = load_geometry(_write(tmp_path, text))
    assert geometry.slab_shape == (10, 10)
    assert geometry.pixel_size_m == pytest.approx(1e-4)
    assert geometry.clen_m == pytest.approx(0.2)
    slab = np.arange(100, dtype=np.float32).reshape(10, 10) + 1
    image = assemble(slab, geometry, fill=0.0)
    # The snapped panel keeps every pixel; fs runs down the screen (lab -y), ss to the right.
    block = slab[0:5, 0:10]
    rows = geometry.assembled_row[0:5, 0:10]
    cols = geometry.assembled_col[0:5, 0:10]
    assert np.all(np.diff(rows, axis=1) == 1) and np.all(np.diff(cols, axis=0) == 1)
    assert np.array_equal(image[rows, cols], block)
    # Every pixel of the 30-degree panel lands somewhere (possibly sharing a pixel).
    rows_b = geometry.assembled_row[5:10]
    cols_b = geometry.assembled_col[5:10]
    assert rows_b.min() >= 0 and cols_b.min() >= 0
    assert set(np.unique(image[rows_b, cols_b])) <= set(slab[5:10].ravel())
    col, row = slab_to_assembled([3.0], [7.0], geometry)
    assert abs(col[0] - cols_b[2, 3]) <= 0.5 and abs(row[0] - rows_b[2, 3]) <= 0.5


def test_missing_geometry_file(tmp_path):
    missing = tmp_path / "nowhere.geom"
    with pytest.raises(OmConfigurationError, match="nowhere.geom") as error:
        load_geometry(missing)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe garbage \x89PNG\r\n",
    b"this is not a geometry file\n",
    b"p0/min_fs = zero\n",
    b"res = 10000\np0/min_fs = 0\np0/max_fs = 9\n",
])
def test_garbage_geometry_file(tmp_path, content):
    path = tmp_path / "garbage.geom"
    path.write_bytes(content)
    with pytest.raises(OmConfigurationError, match="garbage.geom") as error:
        load_geometry(path)
    assert "\n" not in str(error.value)


def test_panels_with_different_pixel_sizes(tmp_path):
    text = HEADER + _panel("a", 0, 9, 0, 4, 0, 0) + _panel("b", 0, 9, 5, 9, 0, 10) + "b/res = 5000\n"
    with pytest.raises(OmConfigurationError, match="res"):
        load_geometry(_write(tmp_path, text))


def test_clen_from_the_data(tmp_path):
    text = HEADER.replace("clen = 0.2", "clen = /LCLS/detector_1/EncoderValue") + _panel(
        "a", 0, 9, 0, 9, -5, -5)
    geometry = load_geometry(_write(tmp_path, text))
    assert geometry.clen_m is None
    assert geometry.clen_from == "/LCLS/detector_1/EncoderValue"


def test_load_bad_pixel_map(tmp_path):
    path = tmp_path / "mask.h5"
    mask = np.ones((6, 8), dtype=np.int32)
    mask[2, 3] = 0
    with h5py.File(path, "w") as handle:
        handle["/data/data"] = mask
        handle["/data/wrong"] = np.ones((8, 6))
        handle["/data/text"] = np.array([b"a", b"b"])
    loaded = load_bad_pixel_map(path, "/data/data", (6, 8))
    assert loaded.dtype == np.uint8 and loaded.shape == (6, 8)
    assert loaded[2, 3] == 0 and loaded.sum() == 47
    for filename, dataset in [(tmp_path / "missing.h5", "/data/data"), (path, "/data/none"),
                              (path, "/data/wrong"), (path, "/data/text"), (path, "/data")]:
        with pytest.raises(OmConfigurationError) as error:
            load_bad_pixel_map(filename, dataset, (6, 8))
        assert str(filename) in str(error.value) and dataset in str(error.value)
    not_hdf5 = tmp_path / "mask.txt"
    not_hdf5.write_text("1 1 1\n")
    with pytest.raises(OmConfigurationError, match="mask.txt"):
        load_bad_pixel_map(not_hdf5, "/data/data", (6, 8))
