# SPDX-License-Identifier: GPL-3.0-or-later
"""Synthetic raw JUNGFRAU frames: realistic 16-bit pixel words of a simulated detector.

Used by the stream simulator and the tests when no recorded data file is given. The simulated
detector has ``n_modules`` modules of 512 x 1024 pixels stacked along ss (module 0 = rows
0-511; a JUNGFRAU 1M is two modules, frames of shape (1024, 1024)) with per-pixel pedestals,
gains and noise of plausible magnitude (compare the real module in
``shared/data/jungfrau_module_real.h5``: G0 pedestals ~1900-3100 ADU, G0 noise ~24 ADU RMS,
G0 gain ~41 ADU/keV).

A frame is made of

* a smooth background: ~0.05 photon/pixel plus a solvent ring (~3.5 Angstrom at 12.4 keV and
  0.1 m, i.e. ~390 pixels) around the beam centre of the real JUNGFRAU 1M geometry
  (between the two modules, fs ~587), peaking near 0.18 photon/pixel; the double-size pixels
  at ASIC borders collect 2x (4x at the ASIC corners) as much;
* on hit frames (decided by a seeded random number with probability ``hit_fraction``), Bragg
  spots: 2-D Gaussians (sigma 0.7-1.2 pixels) integrated over the pixels, with integrated
  intensities between ~20 and ``max_spot_photons`` photons (most weak, a tail strong enough to
  switch the brightest pixels into G1 and, rarely, G2);
* Poisson statistics of the photons, Gaussian electronic noise per gain stage, and the gain
  switching of the detector: a pixel stays in G0 until its 14-bit ADC would overflow, then
  uses G1 until its (decreasing) ADC would reach 0, then G2, whose ADC is clipped at 0 (which
  the calibration reads as saturated). The word is ``(code << 14) | ADC`` with codes 0b00, 0b01,
  0b11 for G0, G1, G2 (PSI's conventions, see ``shared/reference/jungfrau_zmq_stream.md``).

A frame is a deterministic function of ``seed`` and its index. Generation is vectorised numpy
(random bits drawn in bulk, Poisson sampling by inversion against precomputed per-pixel
thresholds, Gaussian noise from a table of normal quantiles).
"""

import os
from typing import Literal, NamedTuple

import numpy as np
import scipy.special
from numpy.typing import NDArray

from om.data_retrieval_layer.jungfrau_calibration_files import write_calibration_files

MODULE_SHAPE: tuple[int, int] = (512, 1024)
"""Shape (ss, fs) of one JUNGFRAU module, in pixels."""

DOUBLE_PIXEL_COLUMNS: tuple[int, ...] = (255, 256, 511, 512, 767, 768)
DOUBLE_PIXEL_ROWS: tuple[int, ...] = (255, 256)

DEFAULT_BEAM_CENTRE_1M: tuple[float, float] = (511.5, 587.0)
"""Beam centre (ss, fs) in raw-slab pixels of the real JUNGFRAU 1M geometry
(``jungfrau1M_cheetah.geom``: x = 0 near fs 587, y = 0 in the gap between the modules)."""

_ADC_MAX = 16383
_PATCH_HALF = 4  # spots are rendered on (2 * 4 + 1)^2 pixel patches (> 3.7 sigma)
_N_THRESHOLDS = 3  # Poisson thresholds kept per pixel; rarer counts are resolved on the fly
_NORMAL_TABLE_BITS = 16


class SyntheticFrame(NamedTuple):
    """Everything about one simulated frame.

    Attributes:
        raw: uint16 (n_modules * 512, 1024) raw pixel words.
        photons: float32 (n_modules * 512, 1024) photons deposited in each pixel (integers;
            the truth that a calibration should recover, up to noise).
        is_hit: whether the frame has Bragg spots.
        spots: float64 (n, 2) spot centres (ss, fs) in frame pixels, the centre of pixel
            (i, j) being (i, j); (0, 2) on non-hit frames.
        spot_photons: float64 (n,) integrated expected intensity of each spot, photons.
    """

    raw: NDArray[np.uint16]
    photons: NDArray[np.float32]
    is_hit: bool
    spots: NDArray[np.float64]
    spot_photons: NDArray[np.float64]


class SyntheticJungfrau:
    """A simulated JUNGFRAU detector producing raw frames and its own calibration files.

    Args:
        n_modules: number of 512 x 1024 modules (2 for a JUNGFRAU 1M).
        photon_energy_kev: the photon energy, keV.
        hit_fraction: probability that a frame is a hit (has Bragg spots), 0..1.
        spots_per_hit: (min, max) number of spots per module on a hit frame (inclusive).
        seed: the seed of the detector's calibration constants and of every frame.
        beam_centre: (ss, fs) of the beam in frame pixels; default: the middle of the 1M
            geometry (:data:`DEFAULT_BEAM_CENTRE_1M`) for 2 modules, the middle of the slab
            otherwise.
        solvent_ring_radius: radius of the solvent ring, pixels.
        g0_noise_adu: median G0 electronic noise (RMS), ADU (real module: ~24 ADU, 0.05 photon
            at 12.4 keV); G1 and G2 noise are ``g1_noise_adu`` and ``g2_noise_adu``.
        max_spot_photons: the largest integrated spot intensity, photons (the smallest is 20).
        double_pixel_signal: whether the double-size pixels at ASIC borders collect 2x (4x) the
            background, as on the real detector.

    Attributes:
        pedestals_adc: float32 (n_modules, 3, 512, 1024) pedestals of G0, G1, G2, ADC units.
        gains_adu_per_kev: float32 (n_modules, 3, 512, 1024) gains, ADU per keV (G1, G2 < 0).
        g0_noise: float32 (n_modules * 512, 1024) G0 noise RMS per pixel, ADU.
        background: float32 (n_modules * 512, 1024) mean background photons per pixel.
    """

    def __init__(
        self,
        n_modules: int = 2,
        photon_energy_kev: float = 12.4,
        hit_fraction: float = 0.5,
        spots_per_hit: tuple[int, int] = (150, 400),
        seed: int = 0,
        *,
        beam_centre: tuple[float, float] | None = None,
        solvent_ring_radius: float = 390.0,
        g0_noise_adu: float = 24.0,
        g1_noise_adu: float = 3.0,
        g2_noise_adu: float = 2.0,
        max_spot_photons: float = 4000.0,
        double_pixel_signal: bool = True,
    ) -> None:
        if int(n_modules) < 1:
            raise ValueError(f"n_modules must be at least 1, not {n_modules}")
        if not photon_energy_kev > 0:
            raise ValueError(f"photon_energy_kev must be positive, not {photon_energy_kev}")
        if not 0.0 <= hit_fraction <= 1.0:
            raise ValueError(f"hit_fraction must be within 0..1, not {hit_fraction}")
        low, high = (int(value) for value in spots_per_hit)
        if not 0 <= low <= high:
            raise ValueError(
                f"spots_per_hit must be (min, max) with 0 <= min <= max, not {spots_per_hit}"
            )
        if not max_spot_photons >= 20.0:
            raise ValueError(f"max_spot_photons must be at least 20, not {max_spot_photons}")
        self.n_modules = int(n_modules)
        self.photon_energy_kev = float(photon_energy_kev)
        self.hit_fraction = float(hit_fraction)
        self.spots_per_hit = (low, high)
        self.seed = int(seed)
        self.max_spot_photons = float(max_spot_photons)
        self.g1_noise_adu = float(g1_noise_adu)
        self.g2_noise_adu = float(g2_noise_adu)
        self.frame_shape: tuple[int, int] = (self.n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1])
        if beam_centre is None:
            middle = (self.frame_shape[0] / 2 - 0.5, 511.5)
            beam_centre = DEFAULT_BEAM_CENTRE_1M if self.n_modules == 2 else middle
        self.beam_centre = (float(beam_centre[0]), float(beam_centre[1]))

        rng = np.random.default_rng([self.seed, 0])
        self.pedestals_adc, self.gains_adu_per_kev = _detector_constants(rng, self.n_modules)
        n_pixels = self.frame_shape[0] * self.frame_shape[1]
        noise = g0_noise_adu * np.exp(0.08 * rng.standard_normal(n_pixels))
        self.g0_noise: NDArray[np.float32] = noise.astype(np.float32).reshape(self.frame_shape)

        # Flat per-pixel arrays for the frame generator.
        self._p = [self.pedestals_adc[:, g].reshape(-1) for g in range(3)]
        adu_per_photon = self.gains_adu_per_kev.astype(np.float64) * self.photon_energy_kev
        self._adu_per_photon = [
            adu_per_photon[:, g].reshape(-1).astype(np.float32) for g in range(3)
        ]
        self._noise0 = self.g0_noise.reshape(-1)

        self.background: NDArray[np.float32] = self._background(
            solvent_ring_radius, double_pixel_signal
        )
        lam = self.background.reshape(-1).astype(np.float64)
        self._lam = lam
        # P(X >= j) * 2**32 for j = 1..3: a uniform 32-bit u gives X >= j where u < T_j.
        self._poisson_thresholds = [
            _survival_to_uint32(scipy.special.pdtrc(j - 1, lam))
            for j in range(1, _N_THRESHOLDS + 1)
        ]
        n_levels = 2**_NORMAL_TABLE_BITS
        quantiles = (np.arange(n_levels, dtype=np.float64) + 0.5) / n_levels
        self._normal_table = scipy.special.ndtri(quantiles).astype(np.float32)
        self._last: tuple[int, SyntheticFrame] | None = None

    # ------------------------------------------------------------------ public interface

    def raw_frame(self, index: int) -> tuple[NDArray[np.uint16], bool, NDArray[np.float64]]:
        """Returns the raw words of frame ``index``.

        Args:
            index: the frame index (>= 0); the frame is a deterministic function of seed and index.

        Returns:
            ``(raw, is_hit, spots)``: uint16 (n_modules * 512, 1024) words; whether the frame
            has Bragg spots; float64 (n, 2) spot centres (ss, fs), (0, 2) on non-hits.
        """
        frame = self.frame(index)
        return frame.raw, frame.is_hit, frame.spots

    def expected_photons(self, index: int) -> NDArray[np.float32]:
        """Returns the photons deposited in each pixel of frame ``index`` (the simulated truth).

        Returns:
            float32 (n_modules * 512, 1024) whole numbers of photons (before noise, gain
            switching and ADC rounding; the double pixels hold what they collected, i.e. what
            a calibration with ``double_pixels="keep"`` should recover).
        """
        return self.frame(index).photons

    def frame(self, index: int) -> SyntheticFrame:
        """Returns everything about frame ``index`` (see :class:`SyntheticFrame`).

        The last frame is cached, so ``raw_frame(i)`` then ``expected_photons(i)`` simulates once;
        the arrays are therefore read-only (copy them to modify them).
        """
        index = int(index)
        if index < 0:
            raise ValueError(f"frame index must be >= 0, not {index}")
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        frame = self._simulate(index)
        self._last = (index, frame)
        return frame

    def noise_adu(self, stage: int) -> NDArray[np.float32]:
        """Returns the electronic noise (RMS, ADU) of every pixel in gain stage ``stage``.

        Args:
            stage: 0, 1 or 2 for G0, G1, G2.

        Returns:
            float32 (n_modules * 512, 1024), ADU.

        Raises:
            ValueError: on a stage other than 0, 1, 2.
        """
        if stage not in (0, 1, 2):
            raise ValueError(f"gain stage must be 0, 1 or 2, not {stage!r}")
        if stage == 0:
            return self.g0_noise
        noise = self.g1_noise_adu if stage == 1 else self.g2_noise_adu
        return np.full(self.frame_shape, noise, dtype=np.float32)

    def dark_frame(self, index: int, stage: int) -> NDArray[np.uint16]:
        """Returns frame ``index`` of a dark run with the gain forced to ``stage``.

        No photons: every pixel reads its pedestal of the stage plus Gaussian noise of the
        stage (:meth:`noise_adu`), rounded to the 14-bit ADC, with the stage's gain code
        (``0b00``, ``0b01``, ``0b11``), as in PSI's dark runs (G0 in dynamic gain without beam,
        then G1 and G2 forced). Deterministic in seed, stage and index.

        Args:
            index: the frame index (>= 0).
            stage: 0, 1 or 2 for G0, G1, G2.

        Returns:
            uint16 (n_modules * 512, 1024) raw words.

        Raises:
            ValueError: on a negative index or a stage other than 0, 1, 2.
        """
        noise = self.noise_adu(stage)
        if int(index) < 0:
            raise ValueError(f"frame index must be >= 0, not {index}")
        rng = np.random.default_rng([self.seed, 2, stage, int(index)])
        value = rng.standard_normal(self.frame_shape, dtype=np.float32)
        value *= noise
        value += self.pedestals_adc[:, stage].reshape(self.frame_shape)
        np.rint(value, out=value)
        np.clip(value, 0, _ADC_MAX, out=value)
        code = (0b00, 0b01, 0b11)[stage]
        return value.astype(np.uint16) | np.uint16(code << 14)

    def write_calibration_files(
        self, directory: str | os.PathLike, pedestal_convention: Literal["word", "adc"] = "word"
    ) -> tuple[list[str], list[str]]:
        """Writes the simulated detector's calibration in OM's file layout.

        One dark file per module (HDF5, datasets ``gain0``, ``gain1``, ``gain2``, float32
        (512, 1024)) and one gain file per module (raw little-endian float64 (3, 512, 1024),
        G0, G1, G2, ADU per keV).

        Args:
            directory: where to write (created if needed).
            pedestal_convention: "word" (OM's darks: means of the whole 16-bit word, so G1 and
                G2 darks are 16384 + P and 49152 + P) or "adc" (PSI's: ADC units).

        Returns:
            ``(dark_filenames, gain_filenames)`` in module order.
        """
        return write_calibration_files(
            directory, pedestals_adc=self.pedestals_adc, gains_adu_per_kev=self.gains_adu_per_kev,
            pedestal_convention=pedestal_convention,
        )

    # ------------------------------------------------------------------ simulation

    def _background(self, ring_radius: float, double_pixel_signal: bool) -> NDArray[np.float32]:
        ss = np.arange(self.frame_shape[0], dtype=np.float64)[:, None] - self.beam_centre[0]
        fs = np.arange(self.frame_shape[1], dtype=np.float64)[None, :] - self.beam_centre[1]
        radius = np.hypot(ss, fs)
        background = 0.05 + 0.13 * np.exp(-0.5 * ((radius - ring_radius) / 35.0) ** 2)
        background += 0.02 * np.exp(-radius / 150.0)  # a little air scatter near the beam
        if double_pixel_signal:
            factor = np.ones(MODULE_SHAPE)
            factor[list(DOUBLE_PIXEL_ROWS), :] *= 2.0
            factor[:, list(DOUBLE_PIXEL_COLUMNS)] *= 2.0
            background *= np.tile(factor, (self.n_modules, 1))
        return background.astype(np.float32)

    def _spots(
        self, rng: np.random.Generator
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        low, high = self.spots_per_hit
        counts = rng.integers(low, high + 1, size=self.n_modules)
        module = np.repeat(np.arange(self.n_modules), counts)
        n_spots = module.size
        margin = _PATCH_HALF
        ss = module * MODULE_SHAPE[0] + rng.uniform(margin, MODULE_SHAPE[0] - 1 - margin, n_spots)
        fs = rng.uniform(margin, MODULE_SHAPE[1] - 1 - margin, n_spots)
        sigma = rng.uniform(0.7, 1.2, n_spots)
        # Mostly weak spots with a tail of strong ones: 20 * (max / 20) ** (u ** 3).
        intensity = 20.0 * (self.max_spot_photons / 20.0) ** (rng.random(n_spots) ** 3)
        return np.column_stack((ss, fs)), sigma, intensity

    def _simulate(self, index: int) -> SyntheticFrame:
        rng = np.random.default_rng([self.seed, 1, index])
        n_pixels = self.frame_shape[0] * self.frame_shape[1]
        is_hit = bool(rng.random() < self.hit_fraction)
        if is_hit:
            spots, sigma, intensity = self._spots(rng)
        else:
            spots, sigma, intensity = np.empty((0, 2)), np.empty(0), np.empty(0)

        # Background photons: Poisson by inversion of one uniform 32-bit number per pixel.
        uniform = rng.bit_generator.random_raw((n_pixels + 1) // 2).view(np.uint32)[:n_pixels]
        counts = np.zeros(n_pixels, dtype=np.uint8)
        for threshold in self._poisson_thresholds:
            counts += uniform < threshold
        tail = np.flatnonzero(counts == _N_THRESHOLDS)
        photons = counts.astype(np.float32)
        k = _N_THRESHOLDS
        while tail.size:  # the rare pixels with more photons: continue the inversion
            k += 1
            more = uniform[tail] < _survival_to_uint32(scipy.special.pdtrc(k - 1, self._lam[tail]))
            tail = tail[more]
            photons[tail] += 1.0

        # Spot photons: Poisson on the pixel-integrated Gaussians (sums of Poissons are Poisson).
        if spots.shape[0]:
            offsets = np.arange(-_PATCH_HALF, _PATCH_HALF + 1)
            rows = np.rint(spots[:, 0]).astype(np.int64)[:, None] + offsets
            cols = np.rint(spots[:, 1]).astype(np.int64)[:, None] + offsets
            root2_sigma = (np.sqrt(2.0) * sigma)[:, None]
            f_ss = _pixel_fractions(rows, spots[:, 0:1], root2_sigma)
            f_fs = _pixel_fractions(cols, spots[:, 1:2], root2_sigma)
            expected = intensity[:, None, None] * f_ss[:, :, None] * f_fs[:, None, :]
            flat = (rows[:, :, None] * self.frame_shape[1] + cols[:, None, :]).reshape(-1)
            np.add.at(photons, flat, rng.poisson(expected.reshape(-1)).astype(np.float32))

        # Electronic noise from a table of normal quantiles indexed by 16 random bits.
        noise_index = rng.bit_generator.random_raw((n_pixels + 3) // 4).view(np.uint16)[:n_pixels]
        normal = self._normal_table[noise_index]

        # G0 reading for every pixel; the few that would overflow the 14-bit ADC switch to G1,
        # those whose G1 reading would reach 0 switch to G2.
        value = photons * self._adu_per_photon[0]
        value += self._p[0]
        normal_g0 = normal * self._noise0
        value += normal_g0
        np.rint(value, out=value)
        g1 = np.flatnonzero(value > _ADC_MAX)
        np.clip(value, 0, _ADC_MAX, out=value)
        raw = value.astype(np.uint16)
        if g1.size:
            value1 = (
                self._p[1][g1]
                + photons[g1] * self._adu_per_photon[1][g1]
                + self.g1_noise_adu * normal[g1]
            )
            adc1 = np.rint(value1)
            to_g2 = adc1 < 1.0
            raw[g1] = np.uint16(1 << 14) | np.clip(adc1, 1, _ADC_MAX).astype(np.uint16)
            g2 = g1[to_g2]
            if g2.size:
                value2 = (
                    self._p[2][g2]
                    + photons[g2] * self._adu_per_photon[2][g2]
                    + self.g2_noise_adu * normal[g2]
                )
                adc2 = np.clip(np.rint(value2), 0, _ADC_MAX - 1).astype(np.uint16)
                raw[g2] = np.uint16(3 << 14) | adc2
        raw.flags.writeable = False  # shared through the cache of the last frame
        photons.flags.writeable = False
        spots.flags.writeable = False
        intensity.flags.writeable = False
        return SyntheticFrame(
            raw=raw.reshape(self.frame_shape),
            photons=photons.reshape(self.frame_shape),
            is_hit=is_hit,
            spots=spots,
            spot_photons=intensity,
        )


def _detector_constants(
    rng: np.random.Generator, n_modules: int
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-pixel pedestals (ADC units) and gains (ADU/keV) with per-ASIC and per-pixel spread."""
    shape = (n_modules, 3, *MODULE_SHAPE)
    # (ASIC level range, pixel spread, clip range) of the pedestals of G0, G1, G2.
    pedestal_models = (((1500, 2500), 200.0, (1000, 3000)),
                       ((11000, 13000), 400.0, (10000, 14000)),
                       ((12800, 14200), 300.0, (12000, 15000)))
    gain_means = (41.0, -1.4, -0.11)
    pedestals = np.empty(shape, dtype=np.float32)
    gains = np.empty(shape, dtype=np.float32)
    for stage in range(3):
        (low, high), spread, (lowest, highest) = pedestal_models[stage]
        asic_level = rng.uniform(low, high, (n_modules, 2, 4))
        level = np.repeat(np.repeat(asic_level, 256, axis=1), 256, axis=2)
        values = level + spread * rng.standard_normal((n_modules, *MODULE_SHAPE))
        pedestals[:, stage] = np.clip(values, lowest, highest)
        asic_gain = 1.0 + 0.01 * rng.standard_normal((n_modules, 2, 4))
        relative = np.repeat(np.repeat(asic_gain, 256, axis=1), 256, axis=2)
        pixel_gain = 0.02 * rng.standard_normal((n_modules, *MODULE_SHAPE))
        relative = relative * (1.0 + np.clip(pixel_gain, -0.08, 0.08))
        gains[:, stage] = gain_means[stage] * relative
    return pedestals, gains


def _survival_to_uint32(probability: NDArray[np.float64]) -> NDArray[np.uint32]:
    scaled = np.floor(np.asarray(probability, dtype=np.float64) * 2.0**32 + 0.5)
    return np.clip(scaled, 0, 2.0**32 - 1).astype(np.uint32)


def _pixel_fractions(
    pixels: NDArray[np.int64], centre: NDArray[np.float64], root2_sigma: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Fraction of a unit 1-D Gaussian falling on each pixel (pixel i spans i - 0.5 .. i + 0.5)."""
    upper = scipy.special.erf((pixels + 0.5 - centre) / root2_sigma)
    lower = scipy.special.erf((pixels - 0.5 - centre) / root2_sigma)
    return 0.5 * (upper - lower)
