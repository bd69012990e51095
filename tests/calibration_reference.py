# SPDX-License-Identifier: GPL-3.0-or-later
"""A straightforward numpy JUNGFRAU calibration: the oracle of the numba kernel.

photons = (ADC - P[g]) / (G[g] * E) per pixel and gain stage g (PSI's convention, pedestals in
ADC units); 0xFFFF (missing packet) and gain code 0b10 read NaN, saturated G1/G2 (ADC 0) +inf;
the double-size ASIC-border pixels (module columns 255/256/511/512/767/768, rows 255/256) are
divided by their area (2, or 4 at the corners).
"""

import numpy as np

STAGE_OF_CODE = np.array([0, 1, -1, 2])  # gain code 0b10 is invalid


def calibrate_reference(raw: np.ndarray, pedestals: np.ndarray, gains_adu_per_kev: np.ndarray,
                        photon_energy_kev: float) -> np.ndarray:
    """raw uint16 (n*512, 1024); pedestals, gains (n, 3, 512, 1024) → float32 photons."""
    modules = raw.reshape(-1, 512, 1024)
    code = (modules >> 14).astype(np.int64)
    adc = (modules & 0x3FFF).astype(np.float64)
    stage = STAGE_OF_CODE[code]
    safe = np.where(stage < 0, 0, stage)[:, None]
    pedestal = np.take_along_axis(pedestals.astype(np.float64), safe, axis=1)[:, 0]
    gain = np.take_along_axis(gains_adu_per_kev.astype(np.float64), safe, axis=1)[:, 0]
    photons = (adc - pedestal) / (gain * photon_energy_kev)
    missing_or_invalid = (modules == 0xFFFF) | (stage < 0)
    photons[(stage > 0) & (adc == 0) & ~missing_or_invalid] = np.inf
    photons[missing_or_invalid] = np.nan
    area = np.ones((512, 1024))
    area[:, [255, 256, 511, 512, 767, 768]] *= 2
    area[[255, 256], :] *= 2
    return (photons / area).astype(np.float32).reshape(raw.shape)
