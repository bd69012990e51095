# SPDX-License-Identifier: GPL-3.0-or-later
"""Simulated frames for the peakfinder8 agreement tests, made the same way everywhere.

A small JUNGFRAU-like detector (4 x 4 panels of 64 x 64 pixels, 2-pixel gaps between panels in
the lab frame, the beam off the centre) in photon units: a smooth background that rises towards
the beam, a bright solvent ring, noise, and Bragg-like spots of many sizes and heights, many of
them within a few pixels of a panel edge, on the ring, or both; plus hot single pixels and
blobs larger than ``max_pixel_count``.

The frames are made with integer hashing (splitmix64) and the IEEE basic operations (+ - * /
sqrt) only, element by element (no reductions, no exp/log/sin whose SIMD versions differ
between numpy releases), so numpy 1.26 in OM's virtual environment (where
``make_peakfinder8_reference.py`` runs OM on them) and numpy 2 in the tests make the same bytes;
the reference file stores each frame's SHA-256 and the tests check it.

This module imports numpy only: it must also run beside OM, whose package is named ``om`` too.
"""

import hashlib

import numpy as np

PANEL_FS = 64
PANEL_SS = 64
PANELS_FS = 4
PANELS_SS = 4
SLAB_SHAPE = (PANEL_SS * PANELS_SS, PANEL_FS * PANELS_FS)  # (ss, fs) = (256, 256)
GAP = 2  # pixels between panels in the lab frame
BEAM_FS, BEAM_SS = 131.0, 125.0  # where the beam hits, in unbroken-slab pixel units
RING_RADIUS = 70.0
RING_WIDTH = 3.5
RING_HEIGHT = 3.0  # photons at the ring's centre
#: spots per frame: frame 0 is empty, frames 1-5 sit around the hit limit of 10 peaks.
SPOTS_PER_FRAME = (0, 5, 9, 10, 11, 12, 120, 180, 220) + (250,) * 15
SEED = 20261202

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """uint64 -> uint64 mixing (Steele, Lea, Flood 2014, "SplitMix"), wrapping arithmetic."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _uniform(stream: int, counter: np.ndarray) -> np.ndarray:
    """float64 uniforms in [0, 1) of ``counter`` (uint64 array) in ``stream``."""
    with np.errstate(over="ignore"):
        key = np.uint64(SEED) * np.uint64(1000003) + np.uint64(stream)
        bits = _splitmix64(_splitmix64(counter.astype(np.uint64) ^ key) + key)
    return (bits >> np.uint64(11)).astype(np.float64) / 9007199254740992.0  # 2**53


def _normal(stream: int, counter: np.ndarray) -> np.ndarray:
    """Approximately normal (0, 1): Irwin-Hall sum of four uniforms, rescaled."""
    total = np.zeros(counter.shape, dtype=np.float64)
    for k in range(4):
        total = total + _uniform(stream * 8 + k, counter)
    return (total - 2.0) * np.sqrt(3.0)


def lab_coordinates() -> tuple[np.ndarray, np.ndarray]:
    """float64 (ss, fs) lab x, y of each pixel's index position (f = i), beam at 0.

    Panel (row p, column q) covers slab ``ss`` 64p..64p+63, ``fs`` 64q..64q+63 and sits at lab
    ``x = fs + GAP*q - BEAM_FS``, ``y = -(ss + GAP*p - BEAM_SS)`` (the geometry file below).
    """
    ss, fs = np.mgrid[0:SLAB_SHAPE[0], 0:SLAB_SHAPE[1]].astype(np.float64)
    x = fs + GAP * np.floor(fs / PANEL_FS) - BEAM_FS
    y = -(ss + GAP * np.floor(ss / PANEL_SS) - BEAM_SS)
    return x, y


def geometry_text() -> str:
    """The CrystFEL geometry file of the simulated detector (pixel units, 75 um pixels)."""
    lines = ["; simulated 4x4-panel detector of tests/peakfinder8_simulated_frames.py",
             "res = 13333.3", "clen = 0.1", "photon_energy = 12400", "adu_per_photon = 1",
             "data = /data/data", ""]
    for p in range(PANELS_SS):
        for q in range(PANELS_FS):
            name = f"p{p}a{q}"
            lines += [f"{name}/min_fs = {q * PANEL_FS}", f"{name}/max_fs = {q * PANEL_FS + 63}",
                      f"{name}/min_ss = {p * PANEL_SS}", f"{name}/max_ss = {p * PANEL_SS + 63}",
                      f"{name}/fs = +1.000000x +0.000000y", f"{name}/ss = +0.000000x -1.000000y",
                      f"{name}/corner_x = {q * (PANEL_FS + GAP) - BEAM_FS}",
                      f"{name}/corner_y = {-(p * (PANEL_SS + GAP) - BEAM_SS)}", ""]
    return "\n".join(lines)


def _spot_parameters(frame: int, count: int) -> list[tuple[float, float, float, float]]:
    """(fs, ss, width, height) of each spot: a third near panel edges, a third on the ring."""
    counter = np.arange(count * 8, dtype=np.uint64) + np.uint64(frame * 100000)
    u = _uniform(7, counter).reshape(count, 8) if count else np.zeros((0, 8))
    x_lab, y_lab = lab_coordinates()
    radius = np.sqrt(x_lab * x_lab + y_lab * y_lab)
    ring_ss, ring_fs = np.nonzero(np.abs(radius - RING_RADIUS) < 1.0)
    spots = []
    for k in range(count):
        kind = k % 3
        if kind == 0:  # near an edge: 0-3 px from a panel border, anywhere along it
            panel_fs = int(u[k, 0] * PANELS_FS) * PANEL_FS
            panel_ss = int(u[k, 1] * PANELS_SS) * PANEL_SS
            inset = u[k, 2] * 3.0
            along = u[k, 3] * 63.0
            side = int(u[k, 4] * 4)
            fs, ss = ((panel_fs + inset, panel_ss + along), (panel_fs + 63 - inset, panel_ss + along),
                      (panel_fs + along, panel_ss + inset),
                      (panel_fs + along, panel_ss + 63 - inset))[side]
        elif kind == 1:  # on the ring
            pick = int(u[k, 0] * ring_fs.size)
            fs = ring_fs[pick] + u[k, 1] - 0.5
            ss = ring_ss[pick] + u[k, 2] - 0.5
        else:  # anywhere
            fs = u[k, 0] * (SLAB_SHAPE[1] - 1)
            ss = u[k, 1] * (SLAB_SHAPE[0] - 1)
        width = 0.35 + 2.5 * u[k, 5] * u[k, 5]  # mostly small, some wide
        height = 3.0 + 150.0 * u[k, 6] * u[k, 6]  # many near the detection limit
        spots.append((float(fs), float(ss), float(width), float(height)))
    return spots


def simulated_frame(frame: int) -> np.ndarray:
    """float32 (256, 256) photons: simulated frame ``frame`` (0 <= frame < len(SPOTS_PER_FRAME))."""
    x_lab, y_lab = lab_coordinates()
    radius = np.sqrt(x_lab * x_lab + y_lab * y_lab)
    ring_offset = (radius - RING_RADIUS) / RING_WIDTH
    background = 0.15 + 40.0 / (radius + 20.0) + RING_HEIGHT / (1.0 + ring_offset * ring_offset)
    pixel = np.arange(SLAB_SHAPE[0] * SLAB_SHAPE[1], dtype=np.uint64).reshape(SLAB_SHAPE)
    counter = pixel + np.uint64(frame) * np.uint64(1 << 20)
    values = background + np.sqrt(background + 0.05) * _normal(1, counter)
    ss, fs = np.mgrid[0:SLAB_SHAPE[0], 0:SLAB_SHAPE[1]].astype(np.float64)
    for spot_fs, spot_ss, width, height in _spot_parameters(frame, SPOTS_PER_FRAME[frame]):
        d_fs = fs - spot_fs
        d_ss = ss - spot_ss
        q = (d_fs * d_fs + d_ss * d_ss) / (width * width)
        # Same panel only: a spot is light on one sensor, not across a gap.
        same_panel = ((np.floor(fs / PANEL_FS) == np.floor(round(spot_fs) / PANEL_FS))
                      & (np.floor(ss / PANEL_SS) == np.floor(round(spot_ss) / PANEL_SS)))
        values = values + np.where(same_panel, height / ((1.0 + q) * (1.0 + q)), 0.0)
    # Hot single pixels and blobs larger than max_pixel_count (150): never peaks.
    hot = _uniform(11, counter) < 0.0004
    values = np.where(hot, values + 40.0, values)
    blob_fs, blob_ss = 30.0 + 11.0 * frame, 200.0 - 7.0 * frame
    d2 = (fs - blob_fs) * (fs - blob_fs) + (ss - blob_ss) * (ss - blob_ss)
    values = np.where(d2 < 64.0, values + 25.0, values)
    return values.astype(np.float32)


def frame_sha256(frame: np.ndarray) -> str:
    """Hex SHA-256 of a frame's float32 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(frame, dtype="<f4").tobytes()).hexdigest()
