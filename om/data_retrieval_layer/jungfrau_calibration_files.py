# SPDX-License-Identifier: GPL-3.0-or-later
"""Writing JUNGFRAU calibration constants in OM's file layout.

One pair of files per module: a dark HDF5 file with the float32 (512, 1024) datasets
``gain0``, ``gain1``, ``gain2`` (pedestals per gain stage, ADU) and a raw little-endian float64
gain file of shape (3, 512, 1024) (ADU/keV, G0, G1, G2). :mod:`om.data_retrieval_layer.
jungfrau_calibration` reads them.
"""

import pathlib

import h5py
import numpy as np

# OM's darks average the whole 16-bit word: the gain bits add these offsets (G0, G1, G2).
WORD_OFFSETS = (0.0, 16384.0, 49152.0)


def write_calibration_files(
    directory: str | pathlib.Path, *, pedestals_adc: np.ndarray, gains_adu_per_kev: np.ndarray,
    pedestal_convention: str = "word", prefix: str = "jungfrau",
) -> tuple[list[str], list[str]]:
    """Writes one dark and one gain file per module.

    Args:
        directory: the folder (created if needed).
        pedestals_adc: float (n_modules, 3, 512, 1024) pedestals in ADC units (no gain bits).
        gains_adu_per_kev: float (n_modules, 3, 512, 1024) gains, ADU/keV (G1, G2 negative).
        pedestal_convention: ``"word"`` (OM: whole-word means, G1 + 16384, G2 + 49152) or
            ``"adc"`` (PSI: ADC units).
        prefix: file name prefix; files are ``{prefix}_dark_module{m}.h5`` and
            ``{prefix}_gain_module{m}.bin``.

    Returns:
        (dark file names, gain file names), module 0 first.

    Raises:
        ValueError: on arrays of the wrong shape or an unknown convention.
    """
    if pedestal_convention not in ("word", "adc"):
        raise ValueError(f"unknown pedestal convention {pedestal_convention!r}")
    if pedestals_adc.ndim != 4 or pedestals_adc.shape[1:] != (3, 512, 1024):
        raise ValueError(f"pedestals must be (n_modules, 3, 512, 1024), got {pedestals_adc.shape}")
    if gains_adu_per_kev.shape != pedestals_adc.shape:
        raise ValueError(f"gains must be {pedestals_adc.shape}, got {gains_adu_per_kev.shape}")
    folder = pathlib.Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    darks, gains = [], []
    for module in range(pedestals_adc.shape[0]):
        dark = folder / f"{prefix}_dark_module{module}.h5"
        with h5py.File(dark, "w") as handle:
            for stage in range(3):
                offset = WORD_OFFSETS[stage] if pedestal_convention == "word" else 0.0
                handle[f"gain{stage}"] = (pedestals_adc[module, stage] + offset).astype(np.float32)
        gain = folder / f"{prefix}_gain_module{module}.bin"
        gains_adu_per_kev[module].astype("<f8").tofile(gain)
        darks.append(str(dark))
        gains.append(str(gain))
    return darks, gains
