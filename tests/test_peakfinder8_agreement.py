# SPDX-License-Identifier: GPL-3.0-or-later
"""om's peakfinder8 against the peaks OM itself found with the same parameters (issue 16).

The reference lists (tests/data/peakfinder8_om_reference.h5, made by
tests/make_peakfinder8_reference.py with OM 23.8.3, see tests/data/README.md) hold OM's peaks on
two sets: the 20 real JUNGFRAU frames assembled as a 1M, calibrated by OM, and 24 simulated
frames (spots of many sizes near panel edges and on a bright solvent ring). Targets: peak count
within 1 % of OM's, at least 99 % of OM's peaks matched by ours and 99 % of ours by OM's
within 1 pixel, and the same hit decision on every frame (min_num_peaks_for_hit 10).
"""

import json
import pathlib

import h5py
import numpy as np
import pytest
from scipy.spatial import cKDTree

import peakfinder8_simulated_frames as simulated
from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration
from om.lib.geometry import load_geometry
from om.processing_layer.peakfinder8 import Peakfinder8PeakDetection
from peakfinder8_reference import find_peaks_reference

REFERENCE = pathlib.Path(__file__).parent / "data" / "peakfinder8_om_reference.h5"
MIN_PEAKS_FOR_HIT, MAX_PEAKS_FOR_HIT = 10, 5000  # a hit: 10 < n < 5000, as OM decides


def _reference(set_name):
    """(parameters, per-frame (fs, ss) arrays of OM's peaks, frame SHA-256s) of a set."""
    with h5py.File(REFERENCE, "r") as handle:
        parameters = json.loads(handle.attrs["parameters"])
        group = handle[set_name]
        frame, fs, ss = group["frame"][()], group["fs"][()], group["ss"][()]
        counts = group["num_peaks"][()]
        hashes = [h.decode() if isinstance(h, bytes) else h for h in group.attrs["frame_sha256"]]
    peaks = [np.c_[fs[frame == index], ss[frame == index]] for index in range(counts.size)]
    return parameters, peaks, hashes


def agreement(found, expected):
    """Totals over frames: (our count, OM's count, OM's matched by ours, ours matched by OM's,
    frames with the same hit decision); a match is a peak within 1 pixel."""
    ours = theirs = matched_theirs = matched_ours = same_hit = 0
    for mine, om in zip(found, expected):
        ours += len(mine)
        theirs += len(om)
        if len(mine) and len(om):
            matched_theirs += int(np.sum(cKDTree(mine).query(om)[0] <= 1.0))
            matched_ours += int(np.sum(cKDTree(om).query(mine)[0] <= 1.0))
        same_hit += ((MIN_PEAKS_FOR_HIT < len(mine) < MAX_PEAKS_FOR_HIT)
                     == (MIN_PEAKS_FOR_HIT < len(om) < MAX_PEAKS_FOR_HIT))
    return ours, theirs, matched_theirs, matched_ours, same_hit


def check_targets(name, found, expected):
    ours, theirs, matched_theirs, matched_ours, same_hit = agreement(found, expected)
    print(f"{name}: {len(expected)} frames, OM {theirs} peaks, om {ours} peaks "
          f"({100 * (ours - theirs) / theirs:+.2f} %), OM's matched by om "
          f"{100 * matched_theirs / theirs:.2f} %, om's matched by OM "
          f"{100 * matched_ours / ours:.2f} %, same hit decision {same_hit}/{len(expected)}")
    assert abs(ours - theirs) <= 0.01 * theirs
    assert matched_theirs >= 0.99 * theirs
    assert matched_ours >= 0.99 * ours
    assert same_hit == len(expected)


def _positions(peaks):
    return np.c_[peaks.fs, peaks.ss]


@pytest.fixture(scope="module")
def simulated_set(tmp_path_factory):
    parameters, expected, hashes = _reference("simulated")
    geometry_file = tmp_path_factory.mktemp("geometry") / "simulated.geom"
    geometry_file.write_text(simulated.geometry_text())
    geometry = load_geometry(geometry_file)
    frames = [simulated.simulated_frame(index) for index in range(len(expected))]
    # The frames must be the bytes OM saw: same code, any numpy (basic IEEE operations only).
    assert [simulated.frame_sha256(frame) for frame in frames] == hashes
    return parameters, geometry, frames, expected


def test_agrees_with_om_on_the_simulated_frames(simulated_set):
    parameters, geometry, frames, expected = simulated_set
    finder = Peakfinder8PeakDetection(radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **parameters)
    check_targets("simulated", [_positions(finder.find_peaks(frame)) for frame in frames],
                  expected)


def test_the_oracle_agrees_with_om_on_the_simulated_frames(simulated_set):
    parameters, geometry, frames, expected = simulated_set
    found = [_positions(find_peaks_reference(frame, radius_map=geometry.peakfinder8_radius,
                                             panels=geometry.panel_rectangles, **parameters))
             for frame in frames]
    check_targets("simulated (oracle)", found, expected)


def test_agrees_with_om_on_the_real_frames(real_module, geometry_1m):
    parameters, expected, _ = _reference("real")
    energy_kev = real_module["photon_energy_eV"] / 1000
    # As OM was run: the file's pedestals and gains, double-size pixels kept as measured.
    calibration = JungfrauCalibration(
        pedestals=np.stack([real_module["pedestal"]] * 2),
        gains_adu_per_kev=np.stack([real_module["gain_adu_per_photon"]] * 2) / energy_kev,
        photon_energy_kev=energy_kev, units="photons", double_pixels="keep")
    geometry = load_geometry(geometry_1m)
    finder = Peakfinder8PeakDetection(radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **parameters)
    raw = real_module["raw"]
    found = []
    for index in range(len(expected)):
        frame, _ = calibration.calibrate(np.concatenate([raw[index], raw[(index + 10) % 20]]))
        found.append(_positions(finder.find_peaks(frame)))
    check_targets("real", found, expected)
