# SPDX-License-Identifier: GPL-3.0-or-later
"""Writing JUNGFRAU calibration constants in OM's file layout.

One pair of files per module: a dark HDF5 file with the float32 (512, 1024) datasets
``gain0``, ``gain1``, ``gain2`` (pedestals per gain stage, ADU) and a raw little-endian float64
gain file of shape (3, 512, 1024) (ADU/keV, G0, G1, G2). :mod:`om.data_retrieval_layer.
jungfrau_calibration` reads them. A dark file may hold more datasets (``om_jungfrau_dark.py``
adds the noise and the readings per stage); the calibration ignores them.
"""

import pathlib

import h5py
import numpy as np

# OM's darks average the whole 16-bit word: the gain bits add these offsets (G0, G1, G2).
WORD_OFFSETS = (0.0, 16384.0, 49152.0)


def write_dark_files(
    directory: str | pathlib.Path, *, pedestals_adc: np.ndarray,
    pedestal_convention: str = "word", prefix: str = "jungfrau",
    extra_datasets: dict[str, np.ndarray] | None = None,
    attributes: dict[str, object] | None = None,
) -> list[str]:
    """Writes one dark HDF5 file per module, ``{prefix}_dark_module{m}.h5``.

    Args:
        directory: the folder (created if needed).
        pedestals_adc: float (n_modules, 3, 512, 1024) pedestals of G0, G1, G2 in ADC units (no
            gain bits); NaN marks a pixel without a pedestal (the calibration makes it NaN).
        pedestal_convention: ``"word"`` (OM: whole-word means, G1 + 16384, G2 + 49152) or
            ``"adc"`` (PSI: ADC units).
        prefix: file name prefix.
        extra_datasets: more per-module datasets, ``{name: array (n_modules, ...)}``, e.g. the
            noise ``rms0``; module ``m`` gets ``array[m]`` under ``name`` (the calibration reads
            only ``gain0``, ``gain1``, ``gain2``).
        attributes: HDF5 attributes of the root group of every file.

    Returns:
        The dark file names, module 0 first.

    Raises:
        ValueError: on arrays of the wrong shape, an unknown convention or an extra dataset
            named ``gain0``/``gain1``/``gain2`` or without a first axis of n_modules.
    """
    if pedestal_convention not in ("word", "adc"):
        raise ValueError(f"unknown pedestal convention {pedestal_convention!r}")
    if pedestals_adc.ndim != 4 or pedestals_adc.shape[1:] != (3, 512, 1024):
        raise ValueError(f"pedestals must be (n_modules, 3, 512, 1024), got {pedestals_adc.shape}")
    extra_datasets = extra_datasets or {}
    n_modules = pedestals_adc.shape[0]
    for name, array in extra_datasets.items():
        if name in ("gain0", "gain1", "gain2") or np.shape(array)[:1] != (n_modules,):
            raise ValueError(f"extra dataset {name!r}: a new name and shape (n_modules, ...) "
                             f"needed, got shape {np.shape(array)}")
    folder = pathlib.Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    darks = []
    for module in range(n_modules):
        dark = folder / f"{prefix}_dark_module{module}.h5"
        with h5py.File(dark, "w") as handle:
            for stage in range(3):
                offset = WORD_OFFSETS[stage] if pedestal_convention == "word" else 0.0
                handle[f"gain{stage}"] = (pedestals_adc[module, stage] + offset).astype(np.float32)
            for name, array in extra_datasets.items():
                handle[name] = array[module]
            for key, value in (attributes or {}).items():
                handle.attrs[key] = value
        darks.append(str(dark))
    return darks


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
    darks = write_dark_files(directory, pedestals_adc=pedestals_adc,
                             pedestal_convention=pedestal_convention, prefix=prefix)
    gains = []
    for module in range(pedestals_adc.shape[0]):
        gain = pathlib.Path(directory) / f"{prefix}_gain_module{module}.bin"
        gains_adu_per_kev[module].astype("<f8").tofile(gain)
        gains.append(str(gain))
    return darks, gains
