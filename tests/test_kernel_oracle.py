# SPDX-License-Identifier: GPL-3.0-or-later
"""The fast path (numba calibration + numba peakfinder8 + hit decision) against the oracle
(numpy calibration + the reference peakfinder8), on the 20 real frames as 1M frames."""

import numpy as np
from scipy.spatial import cKDTree

from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration
from om.lib.geometry import load_geometry
from om.lib.package_data import packaged_file
from om.lib.parameters import MonitorParameters
from om.processing_layer.crystallography import CrystallographyProcessing
from om.processing_layer.peakfinder8 import Peakfinder8PeakDetection

from calibration_reference import calibrate_reference
from peakfinder8_reference import find_peaks_reference

PF8_KEYS = ("adc_threshold", "minimum_snr", "min_pixel_count", "max_pixel_count",
            "local_bg_radius", "min_res", "max_res", "max_num_peaks")


def test_fast_path_matches_the_oracle_on_the_real_frames(real_module, geometry_1m):
    parameters = MonitorParameters(packaged_file("monitor.yaml"))
    parameters.validate(CrystallographyProcessing.parameter_groups, complete=False)
    pf8 = {key: parameters.get("peakfinder8_peak_detection", key) for key in PF8_KEYS}
    min_peaks = parameters.get("crystallography", "min_num_peaks_for_hit")
    max_peaks = parameters.get("crystallography", "max_num_peaks_for_hit")
    energy_kev = real_module["photon_energy_eV"] / 1000
    pedestals = np.stack([real_module["pedestal"]] * 2)
    gains = np.stack([real_module["gain_adu_per_photon"]] * 2) / energy_kev
    calibration = JungfrauCalibration(pedestals=pedestals, gains_adu_per_kev=gains,
                                      photon_energy_kev=energy_kev)
    geometry = load_geometry(geometry_1m)
    finder = Peakfinder8PeakDetection(radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **pf8)
    worst_count, worst_distance = 0.0, 0.0
    for index, module in enumerate(real_module["raw"]):
        raw = np.concatenate([module, module])
        fast_frame, _ = calibration.calibrate(raw)
        oracle_frame = calibrate_reference(raw, pedestals, gains, energy_kev)
        np.testing.assert_allclose(fast_frame, oracle_frame, rtol=1e-5, atol=1e-4,
                                   equal_nan=True)
        fast = finder.find_peaks(fast_frame)
        oracle = find_peaks_reference(oracle_frame, radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **pf8)
        assert abs(len(fast) - len(oracle)) <= 0.01 * len(oracle), index
        distance, _ = cKDTree(np.c_[fast.fs, fast.ss]).query(np.c_[oracle.fs, oracle.ss])
        assert np.mean(distance < 0.5) >= 0.99, index
        assert (min_peaks < len(fast) < max_peaks) == (min_peaks < len(oracle) < max_peaks)
        worst_count = max(worst_count, abs(len(fast) - len(oracle)) / len(oracle))
        worst_distance = max(worst_distance, float(np.median(distance)))
    print(f"20 frames: worst peak count difference {100 * worst_count:.2f} %, "
          f"worst median position difference {worst_distance:.2e} px")
