# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared test fixtures: where the real data lives, and skips with a clear reason without it."""

import os
import pathlib

import h5py
import numpy as np
import pytest

# The GUIs are tested offscreen, with or without a display: .ci/run and the README's test
# command then run the same thing.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("OM_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_MODULE_FILE = SHARED_DATA / "jungfrau_module_real.h5"
GEOMETRY_1M = SHARED_DATA / "geometry" / "jungfrau1M_cheetah.geom"


def _need(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(f"real data not found: {path} (set OM_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def real_module_file() -> pathlib.Path:
    """Path of the 20 real JUNGFRAU module frames with pedestals, gains and reference."""
    return _need(REAL_MODULE_FILE)


@pytest.fixture(scope="session")
def geometry_1m() -> pathlib.Path:
    """Path of the real JUNGFRAU 1M CrystFEL geometry file (Cheetah layout)."""
    return _need(GEOMETRY_1M)


@pytest.fixture(scope="session")
def real_module(real_module_file) -> dict[str, np.ndarray]:
    """The real module file's datasets and its photon energy (eV)."""
    with h5py.File(real_module_file, "r") as handle:
        content = {name: handle[name][()] for name in handle}
        content["photon_energy_eV"] = float(handle.attrs["photon_energy_eV"])
    return content


@pytest.fixture
def real_calibration(tmp_path, real_module_file) -> tuple[list[str], list[str]]:
    """OM-layout calibration files (both modules) written from the real module file."""
    from om.simulation.frame_sources import HDF5FrameSource

    return HDF5FrameSource(str(real_module_file)).write_calibration(tmp_path / "calibration")
