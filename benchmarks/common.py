# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared set-up of the benchmarks: the real data of ../shared/data and the monitor's kernel."""

import argparse
import os
import pathlib
import sys
import time

import h5py
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("OM_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_MODULE_FILE = SHARED_DATA / "jungfrau_module_real.h5"
GEOMETRY_1M = SHARED_DATA / "geometry" / "jungfrau1M_cheetah.geom"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of the benchmarks: the description as written, every option's default."""


def need_real_data() -> None:
    """Exits with a clear reason when ../shared/data is absent."""
    for path in (REAL_MODULE_FILE, GEOMETRY_1M):
        if not path.exists():
            sys.exit(f"skipped: real data not found: {path} (set OM_SHARED_DATA)")


def real_raw_1m_frames() -> tuple[np.ndarray, dict]:
    """The 20 real module frames as 1M frames (the module twice): uint16 (20, 1024, 1024),
    and the module's pedestal (3, 512, 1024), gain per photon (3, 512, 1024), photon energy."""
    with h5py.File(REAL_MODULE_FILE, "r") as handle:
        raw = handle["raw"][()]
        constants = {"pedestal": handle["pedestal"][()], "gain": handle["gain_adu_per_photon"][()],
                     "photon_energy_ev": float(handle.attrs["photon_energy_eV"])}
    return np.concatenate([raw, raw], axis=1), constants


def monitor_kernel():
    """(calibration, peakfinder8, min_peaks, max_peaks) exactly as the example monitor.yaml
    configures them, with the real geometry and calibration."""
    from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration
    from om.lib.geometry import load_geometry
    from om.lib.package_data import packaged_file
    from om.lib.parameters import MonitorParameters
    from om.processing_layer.crystallography import CrystallographyProcessing
    from om.processing_layer.peakfinder8 import Peakfinder8PeakDetection

    _, constants = real_raw_1m_frames()
    energy_kev = constants["photon_energy_ev"] / 1000
    calibration = JungfrauCalibration(
        pedestals=np.stack([constants["pedestal"]] * 2),
        gains_adu_per_kev=np.stack([constants["gain"]] * 2) / energy_kev,
        photon_energy_kev=energy_kev, units="photons", double_pixels="divide")
    parameters = MonitorParameters(packaged_file("monitor.yaml"))
    parameters.validate(CrystallographyProcessing.parameter_groups, complete=False)
    pf8 = {key: parameters.get("peakfinder8_peak_detection", key) for key in (
        "adc_threshold", "minimum_snr", "min_pixel_count", "max_pixel_count", "local_bg_radius",
        "min_res", "max_res", "max_num_peaks")}
    geometry = load_geometry(GEOMETRY_1M)
    finder = Peakfinder8PeakDetection(radius_map=geometry.peakfinder8_radius,
                                      panels=geometry.panel_rectangles, **pf8)
    return (calibration, finder, parameters.get("crystallography", "min_num_peaks_for_hit"),
            parameters.get("crystallography", "max_num_peaks_for_hit"))


class Progress:
    """Prints ``  ... N s: M events processed so far`` every ``every`` seconds, so that a long
    benchmark run is not silent until its end."""

    def __init__(self, every: float = 30.0) -> None:
        self._every = every
        self._start = time.monotonic()
        self._next = self._start + every

    def report(self, events: int) -> None:
        """Prints the line when it is due (call it often, with the events processed so far)."""
        now = time.monotonic()
        if now >= self._next:
            self._next += self._every
            print(f"  ... {now - self._start:.0f} s: {events} events processed so far", flush=True)
