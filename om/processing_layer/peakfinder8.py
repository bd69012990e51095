# SPDX-License-Identifier: GPL-3.0-or-later
"""peakfinder8: Bragg peak detection on calibrated detector frames.

The algorithm is the one described for Cheetah by A. Barty et al., "Cheetah: software for
high-throughput reduction and analysis of serial femtosecond X-ray diffraction data",
J. Appl. Cryst. 47, 1118-1131 (2014), section 3.4 ("peakfinder8"), written here from that
description (no code of Cheetah, OM or CrystFEL is used). Every step below is also implemented,
slowly and plainly with numpy/scipy, by ``tests/peakfinder8_reference.py``, the oracle of the
tests.

Input: a calibrated frame, float (ss, fs) in any unit (photons in om), NaN = invalid pixel, and
the detector's panels (rectangles of the slab, from the CrystFEL geometry): no peak and no local
background ever crosses a panel edge.

1. **Radial statistics.** Every valid pixel (inside a panel, finite radius, good in the bad pixel
   map) belongs to the integer radius bin ``floor(radius)`` (radius in pixels from the beam, from
   the geometry, at pixel centres). For each bin, a fixed sample of its pixels is chosen once at
   construction: all of them when the bin has at most ``radial_stats_max_pixels_per_bin`` pixels,
   else that many, evenly spread over the bin's pixels in raster order (the pixels at
   positions ``floor((i + 0.5) * n / K)``, ``i = 0..K-1``, of the bin's raster-ordered list).
   Per frame, the mean and the standard deviation (population) of the sample's non-NaN values
   are computed, then recomputed from the values within ``mean +/- radial_stats_sigma_clip *
   sigma`` (default 3) of the previous estimate, ``radial_stats_iterations`` computations in
   all (fewer when the kept set stops changing, which gives the same result). A clip narrower
   than ``minimum_snr`` matters where a few bright spots make a large part of a short ring:
   there, ``mean +/- minimum_snr * sigma`` of the spot-inflated sigma would keep the spots. The bin's threshold is
   ``max(adc_threshold, mean + minimum_snr * sigma)``; a bin without valid sample values has an
   infinite threshold.
2. **Candidate pixels**: valid pixels with ``min_res <= radius <= max_res`` and a value strictly
   above their bin's threshold.
3. **Peaks**: 8-connected groups of candidate pixels of the same panel.
4. **Local background** of a peak: the valid, non-NaN pixels of the same panel in the square
   ``(2 * local_bg_radius + 1)**2`` box centred on the peak's brightest pixel whose value is not
   above their own bin's threshold (this leaves out the peak itself and any neighbouring peak,
   which leaves a ring around the peak). Their mean ``bg`` and standard deviation ``bg_sigma``
   (population). With fewer than 2 such pixels, the brightest pixel's radial mean and sigma are
   used instead.
5. **Acceptance**: ``min_pixel_count <= n_pixels <= max_pixel_count``, the integrated
   signal-to-noise ratio ``snr = intensity / (bg_sigma * sqrt(n_pixels))`` (``inf`` when
   ``bg_sigma`` is 0 and ``intensity > 0``, 0 when ``intensity <= 0``) at least
   ``minimum_snr``, and the brightest pixel strictly above ``bg + adc_threshold``.
6. **Measurements**: ``intensity = sum(value - bg)`` over the peak's pixels; position = the
   centroid of the pixel indices weighted by ``value - bg``: ``fs``, ``ss`` in the **pixel index
   convention** (the centre of pixel ``[j, i]`` is ``fs = i, ss = j``, as Cheetah and OM send
   them; CrystFEL's indexamajig adds the half pixel itself for ``--peaks=msgpack``, ``cxi`` and
   ``hdf5`` unless ``--no-half-pixel-shift``); ``radius`` = the same weighted mean of the
   pixels' radii; ``max_pixel_intensity`` = the brightest pixel's value (not background
   subtracted).
7. At most ``max_num_peaks`` peaks: when more are accepted, the ``max_num_peaks`` with the
   largest intensity are kept (equal intensities: the first in raster order). Peaks are listed
   in the raster order of their first pixel (smallest ``ss * n_fs + fs``).

Speed: everything frame-independent (bins, masks, samples, panel map) is computed at
construction; a frame costs one pass over its pixels (the candidate search) plus work
proportional to the sample size and to the number of candidate pixels, in numba-compiled code
(single thread, GIL released). A ``Peakfinder8PeakDetection`` keeps work buffers, so one
instance must not run ``find_peaks`` in two threads at once.
"""

import math
from typing import NamedTuple, Sequence

import numba
import numpy as np

from om.lib.exceptions import OmConfigurationError, OmInvalidDataError

__all__ = ["DEFAULT_PARAMETERS", "PeakList", "Peakfinder8PeakDetection"]

#: Defaults for calibrated JUNGFRAU frames in photon units (12.4 keV; double-size pixels
#: divided by 2 or 4), tuned on the real module of tests/ stacked as a JUNGFRAU 1M: they find
#: the Bragg spots a person sees (~165-215 per module per frame), not the solvent ring's noise
#: (minimum_snr 5 starts finding some: the two identical modules then differ) nor the
#: double-size pixels.
DEFAULT_PARAMETERS = {
    "adc_threshold": 4.0,
    "minimum_snr": 6.0,
    "min_pixel_count": 2,
    "max_pixel_count": 100,
    "local_bg_radius": 3,
    "min_res": 20.0,
    "max_res": 800.0,
    "max_num_peaks": 2048,
}


class _PeakListFields(NamedTuple):
    fs: np.ndarray
    ss: np.ndarray
    intensity: np.ndarray
    num_pixels: np.ndarray
    max_pixel_intensity: np.ndarray
    snr: np.ndarray
    radius: np.ndarray


class PeakList(_PeakListFields):
    """Peaks found in one frame (a NamedTuple): parallel float64 arrays, one entry per peak.

    ``len(peak_list)`` is the number of peaks (not the number of fields).

    Attributes:
        fs: fast-scan position, slab pixel index units (pixel ``i`` centred on ``i``).
        ss: slow-scan position, slab pixel index units.
        intensity: background-subtracted integrated intensity, frame units.
        num_pixels: number of pixels of the peak.
        max_pixel_intensity: value of the brightest pixel, frame units.
        snr: integrated signal-to-noise ratio.
        radius: intensity-weighted mean radius of the peak's pixels, pixels from the beam.
    """

    __slots__ = ()

    def __len__(self) -> int:  # the number of peaks
        return int(self.fs.shape[0])

    @classmethod
    def _make(cls, iterable):  # NamedTuple's _make checks len(), redefined above
        return tuple.__new__(cls, tuple(iterable))

    @classmethod
    def empty(cls) -> "PeakList":
        """A list without peaks."""
        return cls(*(np.zeros(0, dtype=np.float64) for _ in range(7)))


_JIT = dict(cache=True, nogil=True, error_model="numpy")


# The clipped sums may be reordered (vectorised): they never see a NaN.
_FAST_SUMS = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST_SUMS)
def _clipped_sums(buffer, start, stop, low, high, shift):
    """Count, sum and sum of squares of ``value - shift`` for ``low <= value <= high``.

    The values must not be NaN (they are multiplied by a 0/1 weight).
    """
    count = np.float32(0.0)
    total = np.float32(0.0)
    total_sq = np.float32(0.0)
    for j in range(start, stop):
        value = buffer[j]
        weight = np.float32(1.0) if (value >= low) & (value <= high) else np.float32(0.0)
        delta = value - shift
        count += weight
        total += weight * delta
        total_sq += weight * delta * delta
    return count, total, total_sq


@numba.njit(**_JIT)
def _compact_valid(buffer, start, stop):
    """Moves the non-NaN values of ``buffer[start:stop]`` to its front: count, sum, sum sq."""
    count = 0
    total = 0.0
    total_sq = 0.0
    for j in range(start, stop):
        value = buffer[j]
        buffer[start + count] = value
        valid = value == value
        count += 1 if valid else 0
        value64 = np.float64(value) if valid else 0.0
        total += value64
        total_sq += value64 * value64
    return count, total, total_sq


@numba.njit(**_JIT)
def _radial_thresholds(data, sample_pixels, sample_slots, sample_start, iterations, clip,
                       minimum_snr, adc_threshold, buffer, mean_out, sigma_out, thr_out):
    """Per-bin sigma-clipped mean and sigma of the sample, and the per-bin threshold.

    ``sample_pixels`` is sorted (the frame is read in memory order, which the hardware
    prefetches); ``sample_slots`` puts each value in its bin's segment of ``buffer``.
    """
    for j in range(sample_pixels.shape[0]):
        buffer[sample_slots[j]] = data[sample_pixels[j]]
    num_bins = sample_start.shape[0] - 1
    for k in range(num_bins):
        start = sample_start[k]
        stop = sample_start[k + 1]
        count, total, total_sq = _compact_valid(buffer, start, stop)
        if count == 0:
            mean_out[k] = 0.0
            sigma_out[k] = 0.0
            thr_out[k] = np.inf
            continue
        used = count
        mean = total / used
        sigma = math.sqrt(max(total_sq / used - mean * mean, 0.0))
        for _ in range(iterations - 1):
            # Sums of the values minus the previous mean (float32, numerically safe).
            kept_f, delta_sum, delta_sq = _clipped_sums(
                buffer, start, start + count, np.float32(mean - clip * sigma),
                np.float32(mean + clip * sigma), np.float32(mean))
            kept = int(kept_f)
            if kept == used or kept == 0:
                # Same set as the one the estimate came from (values only leave the band
                # when it shrinks): the estimate is converged.
                break
            used = kept
            shift = delta_sum / kept
            mean = mean + shift
            sigma = math.sqrt(max(delta_sq / kept - shift * shift, 0.0))
        mean_out[k] = mean
        sigma_out[k] = sigma
        thr_out[k] = max(adc_threshold, mean + minimum_snr * sigma)


@numba.njit(**_JIT)
def _find_candidates(data, above_floor, pixel_class, candidate_threshold, candidates):
    """Flat indices, in raster order, of the pixels above their candidate threshold.

    ``above_floor`` (uint64 words = 8 bools) flags the pixels above the lowest threshold: the
    words without any flag are skipped.
    """
    count = 0
    n = data.shape[0]
    for word in range(above_floor.shape[0]):
        if above_floor[word] == 0:
            continue
        for i in range(word * 8, min(word * 8 + 8, n)):
            if data[i] > candidate_threshold[pixel_class[i]]:
                candidates[count] = i
                count += 1
    return count


@numba.njit(**_JIT)
def _root(parent, j):
    while parent[j] != j:
        parent[j] = parent[parent[j]]
        j = parent[j]
    return j


@numba.njit(**_JIT)
def _peaks_from_candidates(data, radius, pixel_class, panel_map, panel_rects, n_fs,
                           candidates, num_candidates, labels, parent, num_bins,
                           bin_threshold, radial_mean, radial_sigma, adc_threshold,
                           minimum_snr, min_pixel_count, max_pixel_count, local_bg_radius,
                           masked_class, out):
    """Connected components, local background, acceptance and measurements.

    ``out`` (7, max_out) float64 receives fs, ss, intensity, n, max, snr, radius; returns the
    number of peaks written (all accepted peaks, in raster order of their first pixel).
    """
    # Union-find over the candidate pixels (root = first pixel in raster order).
    for j in range(num_candidates):
        labels[candidates[j]] = j
        parent[j] = j
    for j in range(num_candidates):
        index = candidates[j]
        ss = index // n_fs
        fs = index - ss * n_fs
        panel = panel_map[index]
        for d_ss, d_fs in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
            nss = ss + d_ss
            nfs = fs + d_fs
            if nss < 0 or nfs < 0 or nfs >= n_fs:
                continue
            neighbour = nss * n_fs + nfs
            other = labels[neighbour]
            if other < 0 or panel_map[neighbour] != panel:
                continue
            a = _root(parent, j)
            b = _root(parent, other)
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
    # Per-component sums, indexed by a compact component number.
    component = np.empty(num_candidates, dtype=np.int32)
    num_components = 0
    for j in range(num_candidates):
        r = _root(parent, j)
        if r == j:
            component[j] = num_components
            num_components += 1
        else:
            component[j] = component[r]
    count = np.zeros(num_components, dtype=np.int64)
    sums = np.zeros((num_components, 7), dtype=np.float64)
    brightest = np.empty(num_components, dtype=np.int64)
    brightest_value = np.full(num_components, -np.inf, dtype=np.float64)
    for j in range(num_candidates):
        c = component[j]
        index = candidates[j]
        ss = index // n_fs
        fs = index - ss * n_fs
        v = np.float64(data[index])
        r = np.float64(radius[index])
        count[c] += 1
        sums[c, 0] += v
        sums[c, 1] += v * fs
        sums[c, 2] += v * ss
        sums[c, 3] += fs
        sums[c, 4] += ss
        sums[c, 5] += v * r
        sums[c, 6] += r
        if v > brightest_value[c]:
            brightest_value[c] = v
            brightest[c] = index
    for j in range(num_candidates):
        labels[candidates[j]] = -1
    # Acceptance.
    num_peaks = 0
    for c in range(num_components):
        n = count[c]
        if n < min_pixel_count or n > max_pixel_count:
            continue
        index = brightest[c]
        ss = index // n_fs
        fs = index - ss * n_fs
        panel = panel_map[index]
        min_fs = max(fs - local_bg_radius, panel_rects[panel, 0])
        max_fs = min(fs + local_bg_radius, panel_rects[panel, 1])
        min_ss = max(ss - local_bg_radius, panel_rects[panel, 2])
        max_ss = min(ss + local_bg_radius, panel_rects[panel, 3])
        bg_count = 0
        bg_sum = 0.0
        bg_sum_sq = 0.0
        for bss in range(min_ss, max_ss + 1):
            row = bss * n_fs
            for bfs in range(min_fs, max_fs + 1):
                k = pixel_class[row + bfs]
                if k == masked_class:
                    continue
                v = np.float64(data[row + bfs])
                if not (v <= bin_threshold[k % num_bins]):  # above threshold, or NaN
                    continue
                bg_count += 1
                bg_sum += v
                bg_sum_sq += v * v
        if bg_count >= 2:
            bg = bg_sum / bg_count
            bg_sigma = math.sqrt(max(bg_sum_sq / bg_count - bg * bg, 0.0))
        else:
            k = pixel_class[index] % num_bins
            bg = radial_mean[k]
            bg_sigma = radial_sigma[k]
        intensity = sums[c, 0] - n * bg
        if intensity <= 0.0:
            continue
        if bg_sigma > 0.0:
            snr = intensity / (bg_sigma * math.sqrt(n))
        else:
            snr = np.inf
        if snr < minimum_snr or not (brightest_value[c] - bg > adc_threshold):
            continue
        out[0, num_peaks] = (sums[c, 1] - bg * sums[c, 3]) / intensity
        out[1, num_peaks] = (sums[c, 2] - bg * sums[c, 4]) / intensity
        out[2, num_peaks] = intensity
        out[3, num_peaks] = n
        out[4, num_peaks] = brightest_value[c]
        out[5, num_peaks] = snr
        out[6, num_peaks] = (sums[c, 5] - bg * sums[c, 6]) / intensity
        num_peaks += 1
    return num_peaks


class Peakfinder8PeakDetection:
    """peakfinder8 (Barty et al. 2014) on calibrated frames; see the module docstring.

    Args:
        radius_map: float (ss, fs) radius of each pixel centre in pixels from the beam
            (``DetectorGeometry.radius``); NaN = no pixel.
        panels: the panels as ``(min_fs, max_fs, min_ss, max_ss)`` inclusive rectangles of the
            slab (``DetectorGeometry.panel_rectangles``); they must not overlap. Pixels outside
            every panel are ignored.
        adc_threshold: minimum threshold, and minimum height of a peak's brightest pixel above
            its local background, frame units (photons in om).
        minimum_snr: signal-to-noise factor of the radial thresholds and of the
            integrated-SNR acceptance.
        min_pixel_count, max_pixel_count: allowed peak sizes, pixels.
        local_bg_radius: half width of the local background box, pixels (>= 1).
        min_res, max_res: radius range searched for peaks, pixels from the beam.
        max_num_peaks: at most this many peaks are returned (the strongest).
        bad_pixel_map: optional uint8-like (ss, fs): nonzero good, 0 bad (never in a peak or a
            background).
        radial_stats_iterations: number of mean/sigma computations per radius bin (>= 1).
        radial_stats_sigma_clip: half width, in sigmas, of the band of values kept by each
            sigma-clipping iteration.
        radial_stats_max_pixels_per_bin: size of the fixed per-bin sample of the radial
            statistics; None: every pixel of the bin (slower).

    Raises:
        OmConfigurationError: when a parameter is out of range, a panel lies outside the radius
            map or overlaps another, or the bad pixel map has another shape.
    """

    def __init__(self, *, radius_map: np.ndarray, panels: Sequence[Sequence[int]],
                 adc_threshold: float, minimum_snr: float, min_pixel_count: int,
                 max_pixel_count: int, local_bg_radius: int, min_res: float, max_res: float,
                 max_num_peaks: int, bad_pixel_map: np.ndarray | None = None,
                 radial_stats_iterations: int = 5, radial_stats_sigma_clip: float = 3.0,
                 radial_stats_max_pixels_per_bin: int | None = 256) -> None:
        radius_map = np.asarray(radius_map, dtype=np.float64)
        if radius_map.ndim != 2:
            raise OmConfigurationError(f"peakfinder8: radius_map must be 2D, got shape "
                                       f"{radius_map.shape}")
        checks = (
            ("adc_threshold", math.isfinite(adc_threshold)),
            ("minimum_snr", math.isfinite(minimum_snr) and minimum_snr > 0),
            ("min_pixel_count", int(min_pixel_count) >= 1),
            ("max_pixel_count", int(max_pixel_count) >= int(min_pixel_count)),
            ("local_bg_radius", int(local_bg_radius) >= 1),
            ("min_res", not math.isnan(min_res)),
            ("max_res", not math.isnan(max_res) and max_res >= min_res),
            ("max_num_peaks", int(max_num_peaks) >= 0),
            ("radial_stats_iterations", int(radial_stats_iterations) >= 1),
            ("radial_stats_sigma_clip", math.isfinite(radial_stats_sigma_clip)
             and radial_stats_sigma_clip > 0),
            ("radial_stats_max_pixels_per_bin", radial_stats_max_pixels_per_bin is None
             or int(radial_stats_max_pixels_per_bin) >= 1),
        )
        for key, ok in checks:
            if not ok:
                raise OmConfigurationError(f"peakfinder8: invalid {key}")
        self.shape = radius_map.shape
        self.adc_threshold = float(adc_threshold)
        self.minimum_snr = float(minimum_snr)
        self.min_pixel_count = int(min_pixel_count)
        self.max_pixel_count = int(max_pixel_count)
        self.local_bg_radius = int(local_bg_radius)
        self.min_res = float(min_res)
        self.max_res = float(max_res)
        self.max_num_peaks = int(max_num_peaks)
        self.radial_stats_iterations = int(radial_stats_iterations)
        self.radial_stats_sigma_clip = float(radial_stats_sigma_clip)
        self.radial_stats_max_pixels_per_bin = radial_stats_max_pixels_per_bin

        n_ss, n_fs = self.shape
        panel_map = np.full(self.shape, -1, dtype=np.int32)
        rects = np.asarray(panels, dtype=np.int64).reshape(-1, 4)
        if rects.shape[0] == 0:
            raise OmConfigurationError("peakfinder8: no panels")
        for index, (min_fs, max_fs, min_ss, max_ss) in enumerate(rects):
            if not (0 <= min_fs <= max_fs < n_fs and 0 <= min_ss <= max_ss < n_ss):
                raise OmConfigurationError(
                    f"peakfinder8: panel {index} ({min_fs}-{max_fs}, {min_ss}-{max_ss}) is "
                    f"outside the {self.shape} radius map")
            region = panel_map[min_ss:max_ss + 1, min_fs:max_fs + 1]
            if np.any(region >= 0):
                raise OmConfigurationError(f"peakfinder8: panel {index} overlaps another")
            region[...] = index
        good = (panel_map >= 0) & np.isfinite(radius_map) & (radius_map >= 0)
        if bad_pixel_map is not None:
            bad_pixel_map = np.asarray(bad_pixel_map)
            if bad_pixel_map.shape != self.shape:
                raise OmConfigurationError(
                    f"peakfinder8: bad pixel map shape {bad_pixel_map.shape} is not the "
                    f"detector's {self.shape}")
            good &= bad_pixel_map != 0
        bins = np.zeros(self.shape, dtype=np.int64)
        bins[good] = np.floor(radius_map[good]).astype(np.int64)
        num_bins = int(bins[good].max()) + 1 if np.any(good) else 1
        if 2 * num_bins + 1 > np.iinfo(np.int32).max:
            raise OmConfigurationError("peakfinder8: radius map values too large")
        eligible = good & (radius_map >= self.min_res) & (radius_map <= self.max_res)
        # Pixel classes: bin k (eligible), num_bins + k (valid, outside the radius range),
        # 2 * num_bins (masked: outside the panels, bad, or no radius).
        pixel_class = np.full(self.shape, 2 * num_bins, dtype=np.int32)
        pixel_class[eligible] = bins[eligible]
        outside = good & ~eligible
        pixel_class[outside] = num_bins + bins[outside]
        class_dtype = np.uint16 if 2 * num_bins < 65536 else np.int32
        self._pixel_class = np.ascontiguousarray(pixel_class.astype(class_dtype).ravel())
        self._masked_class = 2 * num_bins
        self._num_bins = num_bins
        self._panel_map = np.ascontiguousarray(panel_map.ravel())
        self._panel_rects = np.ascontiguousarray(rects)
        self._radius = np.ascontiguousarray(
            np.where(good, radius_map, 0.0).astype(np.float32).ravel())
        self.static_mask = good  # bool (ss, fs): pixels that may be part of a peak/background

        # Radial statistics samples (frame independent).
        flat_good = np.flatnonzero(good.ravel())
        flat_bins = bins.ravel()[flat_good]
        order = np.argsort(flat_bins, kind="stable")  # raster order inside each bin
        sorted_pixels = flat_good[order]
        bin_edges = np.searchsorted(flat_bins[order], np.arange(num_bins + 1))
        limit = radial_stats_max_pixels_per_bin
        samples = []
        sample_start = np.zeros(num_bins + 1, dtype=np.int64)
        for k in range(num_bins):
            pixels = sorted_pixels[bin_edges[k]:bin_edges[k + 1]]
            if limit is not None and pixels.size > limit:
                positions = np.floor((np.arange(limit) + 0.5) * pixels.size / limit)
                pixels = pixels[positions.astype(np.int64)]
            samples.append(pixels)
            sample_start[k + 1] = sample_start[k] + pixels.size
        sample_pixels = (np.concatenate(samples).astype(np.int64) if samples
                         else np.zeros(0, dtype=np.int64))
        memory_order = np.argsort(sample_pixels, kind="stable")
        self._sample_pixels = sample_pixels[memory_order].astype(np.int32)
        self._sample_slots = memory_order.astype(np.int32)
        self._sample_start = sample_start

        # Work buffers.
        size = n_ss * n_fs
        self._sample_buffer = np.empty(max(self._sample_pixels.size, 1), dtype=np.float32)
        self._radial_mean = np.zeros(num_bins, dtype=np.float64)
        self._radial_sigma = np.zeros(num_bins, dtype=np.float64)
        self._bin_threshold = np.zeros(num_bins, dtype=np.float64)
        self._candidate_threshold = np.full(2 * num_bins + 1, np.inf, dtype=np.float64)
        self._candidates = np.empty(size, dtype=np.int32)
        self._above_floor = np.zeros(-(-size // 8) * 8, dtype=np.bool_)
        self._labels = np.full(size, -1, dtype=np.int32)
        self._parent = np.empty(size, dtype=np.int32)
        self._out = np.empty((7, 1024), dtype=np.float64)

    @property
    def radial_mean(self) -> np.ndarray:
        """float64 (num_bins,): the last frame's radial background mean per radius bin."""
        return self._radial_mean.copy()

    @property
    def radial_sigma(self) -> np.ndarray:
        """float64 (num_bins,): the last frame's radial background sigma per radius bin."""
        return self._radial_sigma.copy()

    @property
    def radial_threshold(self) -> np.ndarray:
        """float64 (num_bins,): the last frame's threshold per radius bin (inf: no data)."""
        return self._bin_threshold.copy()

    def find_peaks(self, data: np.ndarray) -> PeakList:
        """Finds the Bragg peaks of one frame.

        Args:
            data: calibrated frame, (ss, fs) of the radius map's shape, float (float32 avoids a
                conversion copy), NaN = invalid pixel.

        Returns:
            The :class:`PeakList` (float64 arrays), in raster order of the peaks' first pixels.

        Raises:
            OmInvalidDataError: when the frame's shape does not match the radius map or its
                dtype is not real.
        """
        if not isinstance(data, np.ndarray) or data.shape != self.shape:
            raise OmInvalidDataError(
                f"peakfinder8: frame shape {getattr(data, 'shape', None)} does not match the "
                f"geometry's {self.shape}")
        if data.dtype.kind not in "fiub":
            raise OmInvalidDataError(f"peakfinder8: frame dtype {data.dtype} is not real")
        flat = np.ascontiguousarray(data, dtype=np.float32).reshape(-1)
        num_bins = self._num_bins
        _radial_thresholds(flat, self._sample_pixels, self._sample_slots, self._sample_start,
                           self.radial_stats_iterations, self.radial_stats_sigma_clip,
                           self.minimum_snr, self.adc_threshold,
                           self._sample_buffer, self._radial_mean, self._radial_sigma,
                           self._bin_threshold)
        # Candidate thresholds per pixel class (+inf outside the radius range and masked).
        self._candidate_threshold[:num_bins] = self._bin_threshold
        lowest = self._candidate_threshold.min()
        if not np.isfinite(lowest):
            return PeakList.empty()
        # float32 floor <= every threshold: data > threshold implies data > floor.
        floor = np.nextafter(np.float32(lowest), np.float32(-np.inf))
        np.greater(flat, floor, out=self._above_floor[:flat.size])
        num_candidates = _find_candidates(flat, self._above_floor.view(np.uint64),
                                          self._pixel_class, self._candidate_threshold,
                                          self._candidates)
        if self._out.shape[1] < num_candidates:
            self._out = np.empty((7, num_candidates), dtype=np.float64)
        num_peaks = _peaks_from_candidates(
            flat, self._radius, self._pixel_class, self._panel_map, self._panel_rects,
            self.shape[1], self._candidates, num_candidates, self._labels, self._parent,
            num_bins, self._bin_threshold, self._radial_mean, self._radial_sigma,
            self.adc_threshold, self.minimum_snr, self.min_pixel_count, self.max_pixel_count,
            self.local_bg_radius, self._masked_class, self._out)
        columns = self._out[:, :num_peaks]
        if num_peaks > self.max_num_peaks:
            keep = np.argsort(-columns[2], kind="stable")[:self.max_num_peaks]
            columns = columns[:, np.sort(keep)]
        return PeakList(*(np.array(column, dtype=np.float64) for column in columns))
