# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad JUNGFRAU pixels found in dark runs, and the bad pixel map file the monitor reads.

Four rules, applied to every module and gain stage (a pixel bad in any stage is bad):

* ``never_seen``: fewer than ``min_count`` readings in the stage (0: the pixel never switched
  to it, so it has no pedestal there);
* ``stuck``: at least 2 readings and an RMS below ``stuck_rms`` ADU (a working pixel's ADC
  always moves with the electronic noise);
* ``noisy``: RMS above ``noisy_factor`` times the median RMS of the module in that stage;
* ``pedestal_range``: pedestal outside ``pedestal_min`` .. ``pedestal_max`` ADU, i.e. at the
  ends of the 14-bit ADC, where readings are clipped and the mean is wrong.

The bad pixel map file holds ``/data/data``, uint8 (n_modules * 512, 1024), 1 good and 0 bad
(the layout of ``bad_pixel_map_filename`` / ``bad_pixel_map_hdf5_path`` in ``monitor.yaml``,
read by :func:`om.lib.geometry.load_bad_pixel_map`), and ``/data/reasons``, uint16 of the same
shape whose bit ``3 * rule + stage`` is set when rule ``rule`` (in :data:`RULES` order) flags
the pixel in stage ``stage`` (0, 1, 2 for G0, G1, G2).
"""

import dataclasses
import os

import h5py
import numpy as np
from numpy.typing import NDArray

RULES: tuple[str, ...] = ("never_seen", "stuck", "noisy", "pedestal_range")
BAD_PIXEL_MAP_DATASET = "/data/data"
REASONS_DATASET = "/data/reasons"


@dataclasses.dataclass(frozen=True)
class BadPixelRules:
    """The thresholds of the bad-pixel rules (see the module documentation).

    Attributes:
        min_count: fewest readings of a pixel in a stage for its pedestal to count.
        stuck_rms: RMS (ADU) below which a pixel with 2 or more readings is stuck.
        noisy_factor: a pixel whose RMS exceeds this times its module's median RMS of the
            stage is noisy.
        pedestal_min: lowest acceptable pedestal, ADU.
        pedestal_max: highest acceptable pedestal, ADU.
    """

    min_count: int = 10
    stuck_rms: float = 0.1
    noisy_factor: float = 5.0
    pedestal_min: float = 1.0
    pedestal_max: float = 16382.0


@dataclasses.dataclass
class BadPixels:
    """The result of the rules.

    Attributes:
        reasons: uint16 (n_modules, 512, 1024), bit ``3 * rule + stage`` set when the rule
            flags the pixel in the stage.
        median_rms: float64 (n_modules, 3), the median RMS (ADU) of each module and stage over
            its pixels with enough readings (NaN when there are none).
    """

    reasons: NDArray[np.uint16]
    median_rms: NDArray[np.float64]

    def flagged(self, rule: str, stage: int | None = None) -> NDArray[np.bool_]:
        """Returns bool (n_modules, 512, 1024): pixels flagged by ``rule`` (in ``stage``, or
        in any stage when None).

        Raises:
            ValueError: on an unknown rule.
        """
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}, not one of {RULES}")
        stages = range(3) if stage is None else (stage,)
        bits = sum(1 << (3 * RULES.index(rule) + s) for s in stages)
        return (self.reasons & bits) != 0

    @property
    def good(self) -> NDArray[np.uint8]:
        """uint8 (n_modules * 512, 1024): 1 good pixel, 0 bad (modules stacked along ss)."""
        return (self.reasons == 0).astype(np.uint8).reshape(-1, self.reasons.shape[-1])


def find_bad_pixels(pedestal: NDArray[np.floating], rms: NDArray[np.floating],
                    count: NDArray[np.integer], rules: BadPixelRules) -> BadPixels:
    """Applies the four rules.

    Args:
        pedestal: float (n_modules, 3, 512, 1024) pedestals, ADC units (NaN: none).
        rms: float (n_modules, 3, 512, 1024) noise, ADU (NaN: unknown, no stuck or noisy check).
        count: integer (n_modules, 3, 512, 1024) readings per pixel and stage; negative means
            unknown (e.g. a stage taken from older dark files): only a NaN pedestal then makes
            the pixel ``never_seen``.
        rules: the thresholds.

    Returns:
        The flagged pixels and the median RMS per module and stage.

    Raises:
        ValueError: when the arrays differ in shape or are not (n_modules, 3, 512, 1024).
    """
    pedestal, rms, count = np.asarray(pedestal), np.asarray(rms), np.asarray(count)
    if pedestal.ndim != 4 or pedestal.shape[1] != 3 or not (
            pedestal.shape == rms.shape == count.shape):
        raise ValueError(f"pedestal, rms and count must be (n_modules, 3, 512, 1024), got "
                         f"{pedestal.shape}, {rms.shape}, {count.shape}")
    n_modules = pedestal.shape[0]
    reasons = np.zeros((n_modules, *pedestal.shape[2:]), dtype=np.uint16)
    median_rms = np.full((n_modules, 3), np.nan)
    for module in range(n_modules):
        for stage in range(3):
            p, r, n = pedestal[module, stage], rms[module, stage], count[module, stage]
            known = n >= 0
            never_seen = ~np.isfinite(p) | (known & (n < rules.min_count))
            with np.errstate(invalid="ignore"):
                stuck = (~known | (n >= 2)) & (r < rules.stuck_rms)
                usable = r[~never_seen & np.isfinite(r)]
                median = float(np.median(usable)) if usable.size else np.nan
                median_rms[module, stage] = median
                noisy = r > rules.noisy_factor * median
                out_of_range = (p < rules.pedestal_min) | (p > rules.pedestal_max)
            for rule, flagged in zip(RULES, (never_seen, stuck, noisy, out_of_range)):
                reasons[module][flagged] |= np.uint16(1 << (3 * RULES.index(rule) + stage))
    return BadPixels(reasons=reasons, median_rms=median_rms)


def write_bad_pixel_map(filename: str | os.PathLike, bad_pixels: BadPixels,
                        rules: BadPixelRules) -> str:
    """Writes the bad pixel map file (layout in the module documentation).

    Args:
        filename: the HDF5 file to write (its folder must exist).
        bad_pixels: the result of :func:`find_bad_pixels`.
        rules: the thresholds used, stored as attributes of ``/data/reasons``.

    Returns:
        The file name.

    Raises:
        OSError: when the file cannot be written.
    """
    with h5py.File(filename, "w") as handle:
        handle[BAD_PIXEL_MAP_DATASET] = bad_pixels.good
        handle[BAD_PIXEL_MAP_DATASET].attrs["description"] = "1 good pixel, 0 bad pixel"
        reasons = bad_pixels.reasons.reshape(-1, bad_pixels.reasons.shape[-1])
        handle[REASONS_DATASET] = reasons
        attributes = handle[REASONS_DATASET].attrs
        attributes["description"] = "bit 3 * rule + stage set: the rule flags the pixel"
        attributes["rules"] = ",".join(RULES)
        for key, value in dataclasses.asdict(rules).items():
            attributes[key] = value
    return os.fspath(filename)
