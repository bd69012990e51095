# SPDX-License-Identifier: GPL-3.0-or-later
"""Detector geometry from CrystFEL geometry files: pixel maps, assembled images, bad pixels.

The geometry file is parsed by cfel-fmt (``cfel_fmt.geometry.load_crystfel_geometry``), a
Python re-implementation of CrystFEL's parser. The file format is CrystFEL's, documented in
``man crystfel_geometry`` (https://www.desy.de/~twhite/crystfel/manual-crystfel_geometry.html).

Conventions (used by every function of this module and by ``om.processing_layer.peakfinder8``):

* **Slab**: the 2D data block of one frame, indexed ``[ss, fs]`` (slow scan, fast scan), shape
  ``slab_shape``. Each panel is a rectangle ``min_fs..max_fs`` x ``min_ss..max_ss`` (inclusive)
  of the slab.
* **Pixel index convention for positions**: a fractional position ``(fs, ss)`` in the slab is in
  pixel *index* units: the centre of the pixel ``[j, i]`` is at ``fs = i``, ``ss = j``. Peak
  positions are sent in this convention (the one of Cheetah and OM); CrystFEL, whose geometry
  puts pixel ``i`` on ``[i, i + 1)``, adds 0.5 to such positions when it reads them
  (indexamajig's default half-pixel shift for ``--peaks=cxi``, ``hdf5`` and ``msgpack``).
* **Lab frame** ``x``, ``y``: CrystFEL's, in pixel units (metres / pixel size), relative to the
  point where the beam hits the detector. A panel maps its panel-relative coordinates
  ``(f, s)`` (``f = fs - min_fs``, continuous) to ``x = cnx + f * fsx + s * ssx`` and
  ``y = cny + f * fsy + s * ssy`` (``cnx``, ``cny`` = ``corner_x``, ``corner_y``). The pixel
  maps ``x``, ``y``, ``radius`` are evaluated at the **pixel centres** (``f = i + 0.5``).
  The ``z`` components of ``fs``/``ss`` are ignored (flat detector).
* **Assembled image**: an ``(H, W)`` array drawn with **row 0 at the top** (numpy, QImage,
  ``imshow(origin="upper")``; for pyqtgraph use ``imageAxisOrder="row-major"`` and a ViewBox
  with ``invertY(True)``). Columns increase with ``x`` and rows increase with *decreasing*
  ``y``, so lab ``+x`` is to the right and lab ``+y`` is up on the screen, as CrystFEL's viewers
  draw the detector. Positions in the assembled image use the index convention too: the centre
  of assembled pixel ``[r, c]`` is at ``(col, row) = (c, r)``.
* Panels whose ``fs`` and ``ss`` directions are within 1 degree of the lab axes (all JUNGFRAU,
  Eiger, ePix... geometries refined by CrystFEL) are drawn as **rigid axis-aligned blocks**
  (their small rotation is dropped, which moves a pixel by less than one pixel for rotations
  below 1/(panel size)): every slab pixel then lands on exactly one assembled pixel and no two
  pixels of a panel share one. Other panels are drawn pixel by pixel at their rounded centres
  (there, two neighbours can land on the same assembled pixel and leave a hole).
"""

import dataclasses
import math
import os
from typing import Any, NamedTuple

import h5py
import numpy as np
from cfel_fmt.geometry import load_crystfel_geometry

from om.lib.exceptions import OmConfigurationError

__all__ = [
    "DetectorGeometry",
    "Panel",
    "assemble",
    "load_bad_pixel_map",
    "load_geometry",
    "slab_to_assembled",
]

_SNAP_TOLERANCE = math.sin(math.radians(1.0))  # panels rotated less than this are snapped


class Panel(NamedTuple):
    """One panel of the geometry: its name and its rectangle in the slab (inclusive bounds)."""

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int


@dataclasses.dataclass(frozen=True, eq=False)
class DetectorGeometry:
    """A detector geometry, as loaded by :func:`load_geometry`.

    Attributes:
        filename: the geometry file.
        panels: the panels, in the file's order.
        slab_shape: ``(ss, fs)`` size of the data block, from the largest panel bounds.
        pixel_size_m: pixel size in metres (``1 / res``), the same for every panel.
        clen_m: detector distance ``clen`` in metres, or None when the file takes it from the
            data (``clen = /some/hdf5/path``, see ``clen_from``) or does not give it.
        clen_from: the data location of ``clen`` when it comes from the data, else None.
        coffset_m: ``coffset`` in metres (added to ``clen`` by CrystFEL; 0 when absent).
        photon_energy_ev: photon energy in eV, or None when it comes from the data
            (``photon_energy_from``) or is not given.
        photon_energy_from: the data location of the photon energy, or None.
        x: float32 ``slab_shape``: lab ``x`` of each pixel centre, in pixels from the beam
            (NaN outside every panel).
        y: float32 ``slab_shape``: lab ``y`` of each pixel centre, in pixels from the beam.
        radius: float32 ``slab_shape``: ``sqrt(x**2 + y**2)``, pixels from the beam.
        peakfinder8_radius: float32 ``slab_shape``: the radius at each pixel's *index*
            position (``f = i``, ``s = j``: the pixel's first corner in CrystFEL's convention),
            pixels from the beam, NaN outside every panel. This is the radius map of Cheetah's,
            OM's and CrystFEL's peakfinder8 (``cnx + ifs * fsx + iss * ssx``), whose radius bins
            (``rint``) and resolution limits om's peakfinder8 reproduces.
        panel_index: int16 ``slab_shape``: index in ``panels`` of each pixel, -1 outside.
        bad_region_mask: uint8 ``slab_shape``: 1 good, 0 inside one of the file's ``bad``
            regions (``fs``/``ss`` regions are in slab coordinates, restricted to their
            ``panel`` when it is given; ``x``/``y`` regions test the pixel centres) or outside
            every panel.
        assembled_shape: ``(H, W)`` of the assembled image.
        assembled_row: int32 ``slab_shape``: row of each slab pixel in the assembled image
            (-1 outside every panel).
        assembled_col: int32 ``slab_shape``: column of each slab pixel (-1 outside).
        beam_center_in_assembled: ``(col, row)`` floats: where the beam hits, in assembled
            pixel index units.
    """

    filename: str
    panels: tuple[Panel, ...]
    slab_shape: tuple[int, int]
    pixel_size_m: float
    clen_m: float | None
    clen_from: str | None
    coffset_m: float
    photon_energy_ev: float | None
    photon_energy_from: str | None
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    peakfinder8_radius: np.ndarray
    panel_index: np.ndarray
    bad_region_mask: np.ndarray
    assembled_shape: tuple[int, int]
    assembled_row: np.ndarray
    assembled_col: np.ndarray
    beam_center_in_assembled: tuple[float, float]
    # Per panel: (c0, a_fs, a_ss, r0, b_fs, b_ss): col = c0 + a_fs*f + a_ss*s and
    # row = r0 + b_fs*f + b_ss*s, with f, s panel-relative pixel indices (centre convention).
    _affine: np.ndarray = dataclasses.field(repr=False)
    # Per panel: None, or the block layout (row0, col0, transpose, flip_rows, flip_cols).
    _blocks: tuple[tuple[int, int, bool, bool, bool] | None, ...] = dataclasses.field(repr=False)
    _flat_index: np.ndarray = dataclasses.field(repr=False)

    @property
    def assembled_flat_index(self) -> np.ndarray:
        """int64 ``slab_shape``: index of each slab pixel in the flattened assembled image
        (``assembled_row * W + assembled_col``), -1 outside every panel."""
        return self._flat_index

    @property
    def panel_rectangles(self) -> list[tuple[int, int, int, int]]:
        """The panels as ``(min_fs, max_fs, min_ss, max_ss)`` tuples (peakfinder8's input)."""
        return [(p.min_fs, p.max_fs, p.min_ss, p.max_ss) for p in self.panels]


def _fail(filename: Any, reason: str) -> OmConfigurationError:
    reason = " ".join(str(reason).split())  # one line
    return OmConfigurationError(f"geometry file {filename}: {reason}")


def _common_value(filename: Any, values: list[float], what: str) -> float:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    if len(finite) != len(values) or max(finite) - min(finite) > 1e-9 * max(1.0, abs(finite[0])):
        raise _fail(filename, f"the panels have different {what} values; om needs one value")
    return finite[0]


def _snap(fx: float, fy: float) -> tuple[int, int] | None:
    """Snaps a panel direction, given in (col, row) image units, to an image axis."""
    length = math.hypot(fx, fy)
    if abs(length - 1.0) > 0.01:
        return None
    if abs(fy) <= _SNAP_TOLERANCE * length:
        return (1 if fx > 0 else -1, 0)
    if abs(fx) <= _SNAP_TOLERANCE * length:
        return (0, 1 if fy > 0 else -1)
    return None


def load_geometry(filename: str | os.PathLike) -> DetectorGeometry:
    """Loads a CrystFEL geometry file and computes the pixel maps and the assembly maps.

    Args:
        filename: path of the CrystFEL geometry file (``.geom``).

    Returns:
        The :class:`DetectorGeometry`.

    Raises:
        OmConfigurationError: (one line, naming the file) when the file is missing or
            unreadable, when cfel-fmt cannot parse it, when a panel lacks its corner, has a
            singular or non-unit ``fs``/``ss`` or overlaps the slab bounds badly, or when the
            panels have different pixel sizes, ``clen`` or ``coffset``.
    """
    name = os.fspath(filename)
    if not os.path.isfile(name):
        raise _fail(name, "file not found")
    try:
        detector, beam, _ = load_crystfel_geometry(name)
    except Exception as error:  # cfel-fmt raises RuntimeError, ValueError, IndexError...
        raise _fail(name, f"cannot parse it ({type(error).__name__}: {error})") from error
    try:
        return _build_geometry(name, detector, beam)
    except OmConfigurationError:
        raise
    except Exception as error:
        raise _fail(name, f"cannot use it ({type(error).__name__}: {error})") from error


def _build_geometry(filename: str, detector: dict, beam: dict) -> DetectorGeometry:
    panels_in = detector["panels"]
    panels: list[Panel] = []
    for panel_name, p in panels_in.items():
        for key in ("cnx", "cny"):
            if not math.isfinite(p[key]):
                raise _fail(filename, f"panel {panel_name} has no corner_{key[-1]}")
        if p["orig_max_fs"] < p["orig_min_fs"] or p["orig_max_ss"] < p["orig_min_ss"]:
            raise _fail(filename, f"panel {panel_name} has max_fs < min_fs or max_ss < min_ss")
        panels.append(Panel(panel_name, int(p["orig_min_fs"]), int(p["orig_max_fs"]),
                            int(p["orig_min_ss"]), int(p["orig_max_ss"])))
    slab_shape = (max(p.max_ss for p in panels) + 1, max(p.max_fs for p in panels) + 1)

    res = _common_value(filename, [float(p["res"]) for p in panels_in.values()], "res")
    if not math.isfinite(res) or res <= 0:
        raise _fail(filename, "no valid res (pixels per metre)")
    clen_values = [float(p["clen"]) if not p["clen_from"] else math.nan
                   for p in panels_in.values()]
    clen_froms = {p["clen_from"] for p in panels_in.values() if p["clen_from"]}
    if clen_froms and len(clen_froms) != 1:
        raise _fail(filename, "the panels take clen from different data locations")
    if clen_froms and len(clen_froms) == 1 and any(not math.isnan(v) for v in clen_values):
        raise _fail(filename, "some panels take clen from the data and some do not")
    clen = _common_value(filename, clen_values, "clen")
    coffset = _common_value(filename, [float(p["coffset"]) for p in panels_in.values()],
                            "coffset")
    photon_energy_from = beam.get("photon_energy_from") or None
    energy = float(beam.get("photon_energy", 0.0)) * float(beam.get("photon_energy_scale", 1.0))
    photon_energy = None if photon_energy_from or energy <= 0 else energy

    # Pixel maps at pixel centres.
    x = np.full(slab_shape, np.nan, dtype=np.float64)
    y = np.full(slab_shape, np.nan, dtype=np.float64)
    peakfinder8_radius = np.full(slab_shape, np.nan, dtype=np.float32)
    panel_index = np.full(slab_shape, -1, dtype=np.int16)
    for index, (panel, p) in enumerate(zip(panels, panels_in.values())):
        region = (slice(panel.min_ss, panel.max_ss + 1), slice(panel.min_fs, panel.max_fs + 1))
        if np.any(panel_index[region] >= 0):
            raise _fail(filename, f"panel {panel.name} overlaps another panel in the slab")
        panel_index[region] = index
        s, f = np.mgrid[0:panel.max_ss - panel.min_ss + 1, 0:panel.max_fs - panel.min_fs + 1]
        # peakfinder8's radius map: at the index positions (f = i), in float32 arithmetic, as
        # OM computes it (the same rint bins pixel for pixel).
        x_index = (p["cnx"] + f * p["fsx"] + s * p["ssx"]).astype(np.float32)
        y_index = (p["cny"] + f * p["fsy"] + s * p["ssy"]).astype(np.float32)
        peakfinder8_radius[region] = np.sqrt(x_index * x_index + y_index * y_index)
        f = f + 0.5
        s = s + 0.5
        x[region] = p["cnx"] + f * p["fsx"] + s * p["ssx"]
        y[region] = p["cny"] + f * p["fsy"] + s * p["ssy"]
    radius = np.sqrt(x * x + y * y)

    # Assembly: provisional image coordinates col = x, row = -y; per-panel affine maps.
    affine = np.zeros((len(panels), 6), dtype=np.float64)
    blocks_raw: list[tuple[int, int, int, int] | None] = []
    for index, (panel, p) in enumerate(zip(panels, panels_in.values())):
        width = panel.max_fs - panel.min_fs + 1
        height = panel.max_ss - panel.min_ss + 1
        # Exact map of panel-relative *index* coordinates (pixel centre at integer values).
        a_fs, a_ss = p["fsx"], p["ssx"]
        b_fs, b_ss = -p["fsy"], -p["ssy"]
        c0 = p["cnx"] + 0.5 * (p["fsx"] + p["ssx"])
        r0 = -(p["cny"] + 0.5 * (p["fsy"] + p["ssy"]))
        if abs(a_fs * b_ss - a_ss * b_fs) < 1e-6:
            raise _fail(filename, f"panel {panel.name} has parallel fs and ss directions")
        fs_dir = _snap(a_fs, b_fs)
        ss_dir = _snap(a_ss, b_ss)
        if fs_dir is not None and ss_dir is not None and fs_dir[0] * ss_dir[0] + fs_dir[1] * ss_dir[1] == 0:
            centre_f, centre_s = (width - 1) / 2.0, (height - 1) / 2.0
            centre_col = c0 + a_fs * centre_f + a_ss * centre_s
            centre_row = r0 + b_fs * centre_f + b_ss * centre_s
            a_fs, b_fs = fs_dir
            a_ss, b_ss = ss_dir
            c0 = math.floor(centre_col - a_fs * centre_f - a_ss * centre_s + 0.5)
            r0 = math.floor(centre_row - b_fs * centre_f - b_ss * centre_s + 0.5)
            blocks_raw.append((a_fs, a_ss, b_fs, b_ss))
        else:
            blocks_raw.append(None)
        affine[index] = (c0, a_fs, a_ss, r0, b_fs, b_ss)

    col_f = np.full(slab_shape, np.nan, dtype=np.float64)
    row_f = np.full(slab_shape, np.nan, dtype=np.float64)
    for index, panel in enumerate(panels):
        region = (slice(panel.min_ss, panel.max_ss + 1), slice(panel.min_fs, panel.max_fs + 1))
        s, f = np.mgrid[0:panel.max_ss - panel.min_ss + 1, 0:panel.max_fs - panel.min_fs + 1]
        c0, a_fs, a_ss, r0, b_fs, b_ss = affine[index]
        col_f[region] = c0 + a_fs * f + a_ss * s
        row_f[region] = r0 + b_fs * f + b_ss * s
    inside = panel_index >= 0
    col_i = np.floor(col_f[inside] + 0.5)
    row_i = np.floor(row_f[inside] + 0.5)
    col_shift, row_shift = -col_i.min(), -row_i.min()
    affine[:, 0] += col_shift
    affine[:, 3] += row_shift
    assembled_shape = (int(row_i.max() + row_shift) + 1, int(col_i.max() + col_shift) + 1)
    assembled_row = np.full(slab_shape, -1, dtype=np.int32)
    assembled_col = np.full(slab_shape, -1, dtype=np.int32)
    assembled_row[inside] = (row_i + row_shift).astype(np.int32)
    assembled_col[inside] = (col_i + col_shift).astype(np.int32)
    flat_index = np.full(slab_shape, -1, dtype=np.int64)
    flat_index[inside] = (assembled_row[inside].astype(np.int64) * assembled_shape[1]
                          + assembled_col[inside])

    blocks: list[tuple[int, int, bool, bool, bool] | None] = []
    for index, (panel, raw) in enumerate(zip(panels, blocks_raw)):
        if raw is None:
            blocks.append(None)
            continue
        a_fs, a_ss, b_fs, b_ss = raw
        region = (slice(panel.min_ss, panel.max_ss + 1), slice(panel.min_fs, panel.max_fs + 1))
        transpose = a_fs == 0  # fs runs along the rows of the assembled image
        # After an optional transpose, axis 0 follows the rows: flip when rows decrease.
        flip_rows = (b_fs if transpose else b_ss) < 0
        flip_cols = (a_ss if transpose else a_fs) < 0
        blocks.append((int(assembled_row[region].min()), int(assembled_col[region].min()),
                       transpose, flip_rows, flip_cols))

    bad_region_mask = _bad_regions(filename, detector, panels, slab_shape, x, y, inside)
    return DetectorGeometry(
        filename=filename,
        panels=tuple(panels),
        slab_shape=slab_shape,
        pixel_size_m=1.0 / res,
        clen_m=None if math.isnan(clen) else clen,
        clen_from=next(iter(clen_froms)) if clen_froms else None,
        coffset_m=0.0 if math.isnan(coffset) else coffset,
        photon_energy_ev=photon_energy,
        photon_energy_from=photon_energy_from,
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        radius=radius.astype(np.float32),
        peakfinder8_radius=peakfinder8_radius,
        panel_index=panel_index,
        bad_region_mask=bad_region_mask,
        assembled_shape=assembled_shape,
        assembled_row=assembled_row,
        assembled_col=assembled_col,
        beam_center_in_assembled=(float(col_shift), float(row_shift)),
        _affine=affine,
        _blocks=tuple(blocks),
        _flat_index=flat_index,
    )


def _bad_regions(filename: str, detector: dict, panels: list[Panel],
                 slab_shape: tuple[int, int], x: np.ndarray, y: np.ndarray,
                 inside: np.ndarray) -> np.ndarray:
    mask = inside.astype(np.uint8)
    names = {p.name: p for p in panels}
    for region_name, bad in detector.get("bad", {}).items():
        restrict = np.ones(slab_shape, dtype=bool)
        if bad.get("panel"):
            if bad["panel"] not in names:
                raise _fail(filename, f"bad region {region_name} names an unknown panel")
            p = names[bad["panel"]]
            restrict[:] = False
            restrict[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = True
        if bad["is_fsss"]:
            region = np.zeros(slab_shape, dtype=bool)
            region[max(bad["min_ss"], 0):bad["max_ss"] + 1,
                   max(bad["min_fs"], 0):bad["max_fs"] + 1] = True
        else:
            with np.errstate(invalid="ignore"):
                region = ((x >= bad["min_x"]) & (x <= bad["max_x"])
                          & (y >= bad["min_y"]) & (y <= bad["max_y"]))
        mask[region & restrict] = 0
    return mask


def assemble(slab: np.ndarray, geometry: DetectorGeometry, out: np.ndarray | None = None,
             fill: float = np.nan) -> np.ndarray:
    """Draws a slab-shaped frame as the assembled (lab-frame) image.

    Args:
        slab: ``geometry.slab_shape`` array (any real dtype).
        geometry: the detector geometry.
        out: optional ``geometry.assembled_shape`` array to draw into (reused between
            calls to avoid an allocation; its dtype is kept).
        fill: value of the assembled pixels no slab pixel lands on (gaps); ignored when
            ``out`` is given and ``fill`` is None.

    Returns:
        The ``(H, W)`` assembled image (float32 unless ``out`` is given), row 0 at the top,
        lab ``+x`` to the right and ``+y`` up (see the module docstring).

    Raises:
        ValueError: when ``slab`` or ``out`` has the wrong shape.
    """
    if slab.shape != geometry.slab_shape:
        raise ValueError(f"slab shape {slab.shape} does not match the geometry's "
                         f"{geometry.slab_shape}")
    if out is None:
        out = np.empty(geometry.assembled_shape, dtype=np.float32)
    elif out.shape != geometry.assembled_shape:
        raise ValueError(f"out shape {out.shape} is not the assembled shape "
                         f"{geometry.assembled_shape}")
    if fill is not None:
        out.fill(fill)
    pixelwise: list[int] = []
    for index, (panel, block) in enumerate(zip(geometry.panels, geometry._blocks)):
        if block is None:
            pixelwise.append(index)
            continue
        row0, col0, transpose, flip_rows, flip_cols = block
        view = slab[panel.min_ss:panel.max_ss + 1, panel.min_fs:panel.max_fs + 1]
        if transpose:
            view = view.T
        if flip_rows:
            view = view[::-1, :]
        if flip_cols:
            view = view[:, ::-1]
        out[row0:row0 + view.shape[0], col0:col0 + view.shape[1]] = view
    for index in pixelwise:
        panel = geometry.panels[index]
        region = (slice(panel.min_ss, panel.max_ss + 1), slice(panel.min_fs, panel.max_fs + 1))
        out.reshape(-1)[geometry._flat_index[region].ravel()] = slab[region].ravel()
    return out


def slab_to_assembled(fs: Any, ss: Any, geometry: DetectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Maps slab positions (e.g. peak positions) to positions in the assembled image.

    Args:
        fs, ss: array-likes (same shape) of slab positions in pixel index units (the centre of
            pixel ``[j, i]`` is at ``fs = i, ss = j``), as peakfinder8 returns them.
        geometry: the detector geometry.

    Returns:
        ``(col, row)`` float64 arrays of the same shape, in assembled pixel index units
        (``assembled_col[j, i] == round(col)`` at pixel centres). Positions whose nearest
        pixel is outside the slab or outside every panel give NaN.
    """
    fs = np.asarray(fs, dtype=np.float64)
    ss = np.asarray(ss, dtype=np.float64)
    fs_i = np.floor(fs + 0.5)
    ss_i = np.floor(ss + 0.5)
    n_ss, n_fs = geometry.slab_shape
    with np.errstate(invalid="ignore"):
        valid = (fs_i >= 0) & (fs_i < n_fs) & (ss_i >= 0) & (ss_i < n_ss)
    panel = np.full(fs.shape, -1, dtype=np.int64)
    panel[valid] = geometry.panel_index[ss_i[valid].astype(np.int64), fs_i[valid].astype(np.int64)]
    valid &= panel >= 0
    col = np.full(fs.shape, np.nan)
    row = np.full(fs.shape, np.nan)
    if np.any(valid):
        p = panel[valid]
        coefficients = geometry._affine[p]
        min_fs = np.array([q.min_fs for q in geometry.panels], dtype=np.float64)[p]
        min_ss = np.array([q.min_ss for q in geometry.panels], dtype=np.float64)[p]
        f = fs[valid] - min_fs
        s = ss[valid] - min_ss
        col[valid] = coefficients[:, 0] + coefficients[:, 1] * f + coefficients[:, 2] * s
        row[valid] = coefficients[:, 3] + coefficients[:, 4] * f + coefficients[:, 5] * s
    return col, row


def load_bad_pixel_map(filename: str | os.PathLike, hdf5_path: str,
                       slab_shape: tuple[int, int]) -> np.ndarray:
    """Reads a bad pixel map from an HDF5 file.

    Args:
        filename: the HDF5 file.
        hdf5_path: the dataset in the file: a ``slab_shape`` numeric array, nonzero = good
            pixel, 0 = bad pixel (OM's convention).
        slab_shape: the expected ``(ss, fs)`` shape (``DetectorGeometry.slab_shape``).

    Returns:
        uint8 array of ``slab_shape``: 1 good, 0 bad.

    Raises:
        OmConfigurationError: (naming the file and the dataset) when the file is missing or not
            HDF5, the dataset is missing, is not a numeric array, or has another shape.
    """
    name = os.fspath(filename)
    where = f"bad pixel map {name} (dataset {hdf5_path})"
    if not os.path.isfile(name):
        raise OmConfigurationError(f"{where}: file not found")
    try:
        with h5py.File(name, "r") as handle:
            if hdf5_path not in handle:
                raise OmConfigurationError(f"{where}: no such dataset in the file")
            dataset = handle[hdf5_path]
            if not isinstance(dataset, h5py.Dataset):
                raise OmConfigurationError(f"{where}: not a dataset")
            if dataset.dtype.kind not in "biuf":
                raise OmConfigurationError(f"{where}: dtype {dataset.dtype} is not numeric")
            if tuple(dataset.shape) != tuple(slab_shape):
                raise OmConfigurationError(
                    f"{where}: shape {tuple(dataset.shape)} is not the detector's "
                    f"{tuple(slab_shape)}"
                )
            data = dataset[()]
    except OmConfigurationError:
        raise
    except Exception as error:  # not an HDF5 file, unreadable, filter missing...
        raise OmConfigurationError(
            f"{where}: cannot read it ({type(error).__name__}: {' '.join(str(error).split())})"
        ) from error
    return (data != 0).astype(np.uint8)
