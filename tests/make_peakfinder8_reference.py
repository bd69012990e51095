# SPDX-License-Identifier: GPL-3.0-or-later
"""Makes tests/data/peakfinder8_om_reference.h5: the peaks the real OM finds, for the tests.

Runs OM itself (PyPI ``ondamonitor``, its calibration and its C++ peakfinder8) on two sets of
frames and stores the peak lists, so that ``tests/test_peakfinder8_agreement.py`` can compare
om against OM without OM installed. OM needs Python 3.11 and numpy < 2, and its package is named
``om`` like ours, so it runs in a virtual environment of its own::

    python3.11 -m venv /tmp/ondavenv
    /tmp/ondavenv/bin/pip install ondamonitor==23.8.3 'numpy<2'
    /tmp/ondavenv/bin/python tests/make_peakfinder8_reference.py \\
        --data ../shared/data --output tests/data/peakfinder8_om_reference.h5

The sets:

* ``real``: the 20 real JUNGFRAU module frames of ``jungfrau_module_real.h5`` assembled as a 1M
  (module 0 = ``raw[i]``, module 1 = ``raw[(i + 10) % 20]``), calibrated to photons by OM's
  ``Jungfrau1MCalibration`` with the file's pedestals and gains written in OM's calibration
  file layout (double-size pixels kept as measured, as OM does), geometry
  ``geometry/jungfrau1M_cheetah.geom``.
* ``simulated``: the frames of ``tests/peakfinder8_simulated_frames.py`` (spots of many sizes
  near panel edges and on a bright solvent ring) with that module's geometry.

Both with OM's ``Peakfinder8PeakDetection`` (``fast_mode`` off: radial statistics of every
pixel) and ``PARAMETERS``. This script imports nothing of our ``om``.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import peakfinder8_simulated_frames as simulated  # noqa: E402

PARAMETERS = {"adc_threshold": 5.0, "minimum_snr": 5.0, "min_pixel_count": 2,
              "max_pixel_count": 150, "local_bg_radius": 4, "min_res": 0, "max_res": 10000,
              "max_num_peaks": 2048}
WORD_OFFSETS = (0.0, 16384.0, 49152.0)  # OM's darks average the whole 16-bit word
# OM's keys, and the names stored: OM's "snr" holds the local background sigma (the Cython
# wrapper returns (fs, ss, intensity, index, npix, max_i, sigma, snr) and OM reads item 6).
FIELDS = {"fs": "fs", "ss": "ss", "intensity": "intensity", "num_pixels": "num_pixels",
          "max_pixel_intensity": "max_pixel_intensity", "snr": "local_sigma"}


def real_frames(data_folder: pathlib.Path, work: pathlib.Path):
    """Yields the 20 real 1M frames calibrated by OM (float32 (1024, 1024) photons)."""
    from om.algorithms.calibration import Jungfrau1MCalibration

    with h5py.File(data_folder / "jungfrau_module_real.h5", "r") as handle:
        raw = handle["raw"][()]
        pedestal = handle["pedestal"][()]
        gain = handle["gain_adu_per_photon"][()]
        energy_kev = float(handle.attrs["photon_energy_eV"]) / 1000.0
    darks, gains = [], []
    for module in range(2):
        dark = work / f"dark_module{module}.h5"
        with h5py.File(dark, "w") as handle:
            for stage in range(3):
                handle[f"gain{stage}"] = (pedestal[stage] + WORD_OFFSETS[stage]).astype(np.float32)
        gain_file = work / f"gain_module{module}.bin"
        (gain.astype(np.float64) / energy_kev).astype("<f8").tofile(gain_file)
        darks.append(str(dark))
        gains.append(str(gain_file))
    calibration = Jungfrau1MCalibration(dark_filenames=darks, gain_filenames=gains,
                                        photon_energy_kev=energy_kev)
    for index in range(raw.shape[0]):
        frame = np.concatenate([raw[index], raw[(index + 10) % raw.shape[0]]])
        yield calibration.apply_calibration(data=frame)


def om_peak_finder(geometry_file: pathlib.Path):
    """OM's Peakfinder8PeakDetection for a geometry file, with PARAMETERS."""
    from om.algorithms.crystallography import Peakfinder8PeakDetection
    from om.lib.geometry import GeometryInformation

    geometry = GeometryInformation.from_file(geometry_filename=str(geometry_file))
    return Peakfinder8PeakDetection(
        radius_pixel_map=geometry.get_pixel_maps()["radius"],
        layout_info=geometry.get_layout_info(),
        crystallography_parameters=dict(PARAMETERS, bad_pixel_map_filename=None,
                                        bad_pixel_map_hdf5_path=None))


def store_set(group: h5py.Group, finder, frames) -> None:
    """Runs OM's peakfinder8 on each frame and stores the concatenated peak lists."""
    columns = {name: [] for name in FIELDS.values()}
    frame_index, counts, hashes = [], [], []
    for index, frame in enumerate(frames):
        peaks = finder.find_peaks(data=frame)
        counts.append(peaks["num_peaks"])
        hashes.append(simulated.frame_sha256(frame))
        frame_index += [index] * peaks["num_peaks"]
        for key, name in FIELDS.items():
            columns[name] += list(peaks[key])
    group["frame"] = np.asarray(frame_index, dtype=np.int32)
    group["num_peaks"] = np.asarray(counts, dtype=np.int32)
    for name, column in columns.items():
        group.create_dataset(name, data=np.asarray(column, dtype=np.float32), compression="gzip")
    group.attrs["frame_sha256"] = np.asarray(hashes, dtype=h5py.string_dtype())
    print(f"{group.name}: {len(counts)} frames, {sum(counts)} peaks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path("../shared/data"))
    parser.add_argument("--output", type=pathlib.Path,
                        default=pathlib.Path("tests/data/peakfinder8_om_reference.h5"))
    arguments = parser.parse_args()
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        simulated_geometry = work / "simulated.geom"
        simulated_geometry.write_text(simulated.geometry_text())
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(arguments.output, "w") as handle:
            handle.attrs["made_by"] = ("tests/make_peakfinder8_reference.py with OM (ondamonitor "
                                       f"{version('ondamonitor')}), numpy {np.__version__}, "
                                       f"Python {platform.python_version()}")
            handle.attrs["made_on"] = datetime.date.today().isoformat()
            handle.attrs["parameters"] = json.dumps(PARAMETERS)
            handle.attrs["fields"] = ("OM's peak list: fs, ss (slab pixel index convention), "
                                      "intensity, num_pixels, max_pixel_intensity (background "
                                      "subtracted), local_sigma (OM's 'snr' key); "
                                      "frame = index of the frame in its set")
            real = handle.create_group("real")
            real.attrs["geometry"] = "jungfrau1M_cheetah.geom"
            store_set(real, om_peak_finder(arguments.data / "geometry/jungfrau1M_cheetah.geom"),
                      real_frames(arguments.data, work))
            sim = handle.create_group("simulated")
            sim.attrs["geometry"] = "peakfinder8_simulated_frames.geometry_text()"
            store_set(sim, om_peak_finder(simulated_geometry),
                      (simulated.simulated_frame(index)
                       for index in range(len(simulated.SPOTS_PER_FRAME))))
    print(f"wrote {arguments.output} ({os.path.getsize(arguments.output)} bytes)")


if __name__ == "__main__":
    main()
