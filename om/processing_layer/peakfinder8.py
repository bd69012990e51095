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

Speed: everything frame-independent (bins, masks, samples, panel map, the radius bins of each
chunk of the frame) is computed at construction, and one numba-compiled call (single thread,
GIL released; per frame it allocates only the returned arrays) does the rest. A frame costs:
reading the radial sample (in memory order) and sigma-clipping it bin by bin (vectorised
sums); one pass over the frame in chunks of 64 pixels, each compared (vectorised) with the
lowest threshold of its radius bins (from a range-minimum table of the per-bin thresholds),
only the few pixels above it being compared with their own thresholds; then work
proportional to the number of candidate pixels (connected groups found by walking the
raster-ordered candidate list, no label image). A ``Peakfinder8PeakDetection`` keeps work
buffers, so one instance must not run ``find_peaks`` in two threads at once.
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


# The sums of the radial statistics may be reordered (vectorised). No "nnan"/"ninf":
# _valid_sums tests for NaN (value == value), and that test must stay.
_FAST_SUMS = {"reassoc", "contract", "nsz", "arcp"}

# Array indices known to be >= 0 are cast to unsigned: numba then skips the negative-index
# wraparound, which otherwise prevents LLVM from vectorising the loops.
_U = np.uint64

# Pixels per chunk of the candidate search (a chunk's pixels above its lowest threshold make
# one 64-bit mask).
_CHUNK = 64

# Lowest set bit of a uint64 m: _DE_BRUIJN_POSITIONS[((m & -m) * _DE_BRUIJN) >> 58].
_DE_BRUIJN = np.uint64(0x03F79D71B4CA8B09)
_DE_BRUIJN_POSITIONS = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DE_BRUIJN_POSITIONS[((int(_DE_BRUIJN) << _bit) & 0xFFFFFFFFFFFFFFFF) >> 58] = _bit
del _bit


@numba.njit(fastmath=_FAST_SUMS, **_JIT)
def _clipped_sums(buffer, start, stop, low, high, shift):
    """Count, sum and sum of squares of ``value - shift`` for ``low <= value <= high``.

    The values must not be NaN (they are multiplied by a 0/1 weight).
    """
    count = np.float32(0.0)
    total = np.float32(0.0)
    total_sq = np.float32(0.0)
    for j in range(start, stop):
        value = buffer[_U(j)]
        weight = np.float32(1.0) if (value >= low) & (value <= high) else np.float32(0.0)
        delta = value - shift
        count += weight
        total += weight * delta
        total_sq += weight * delta * delta
    return count, total, total_sq


@numba.njit(fastmath=_FAST_SUMS, **_JIT)
def _valid_sums(buffer, start, stop):
    """Count, sum and sum of squares (float64) of the non-NaN values of ``buffer[start:stop]``."""
    count = 0
    total = 0.0
    total_sq = 0.0
    for j in range(start, stop):
        value = np.float64(buffer[_U(j)])
        valid = value == value
        count += 1 if valid else 0
        value = value if valid else 0.0
        total += value
        total_sq += value * value
    return count, total, total_sq


@numba.njit(**_JIT)
def _compact_valid(buffer, start, stop):
    """Moves the non-NaN values of ``buffer[start:stop]`` to its front, in order."""
    count = 0
    for j in range(start, stop):
        value = buffer[j]
        buffer[start + count] = value
        count += 1 if value == value else 0


@numba.njit(**_JIT)
def _radial_thresholds(data, sample_pixels, sample_slots, sample_start, iterations, clip,
                       minimum_snr, adc_threshold, buffer, mean_out, sigma_out, thr_out):
    """Per-bin sigma-clipped mean and sigma of the sample, and the per-bin threshold.

    ``sample_pixels`` is sorted (the frame is read in memory order, which the hardware
    prefetches); ``sample_slots`` puts each value in its bin's segment of ``buffer``.
    """
    for j in range(sample_pixels.shape[0]):
        buffer[_U(sample_slots[j])] = data[_U(sample_pixels[j])]
    num_bins = sample_start.shape[0] - 1
    for k in range(num_bins):
        start = sample_start[k]
        stop = sample_start[k + 1]
        count, total, total_sq = _valid_sums(buffer, start, stop)
        if count == 0:
            mean_out[k] = 0.0
            sigma_out[k] = 0.0
            thr_out[k] = np.inf
            continue
        if count < stop - start:  # NaN in the sample (rare): keep the valid values only
            _compact_valid(buffer, start, stop)
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
def _chunk_floor_table(bin_threshold, levels, table):
    """Range-minimum (sparse) table of the bin thresholds rounded down to float32.

    ``table[level * num_bins + k]`` is the minimum of the thresholds of bins ``k`` to
    ``k + 2**level - 1``; the last entry stays +inf. Rounded down, a float32 value is above the
    float32 threshold exactly when it is above the float64 threshold.
    """
    num_bins = bin_threshold.shape[0]
    for k in range(num_bins):
        threshold = bin_threshold[k]
        threshold32 = np.float32(threshold)
        if threshold32 > threshold:
            threshold32 = np.nextafter(threshold32, np.float32(-np.inf))
        table[k] = threshold32
    for level in range(1, levels):
        half = 1 << (level - 1)
        base = level * num_bins
        for k in range(num_bins - 2 * half + 1):
            a = table[base - num_bins + k]
            b = table[base - num_bins + k + half]
            table[base + k] = a if a < b else b


@numba.njit(**_JIT)
def _lowest_bit(mask):
    """Position (0-63) of the lowest set bit of a nonzero uint64 (de Bruijn multiplication)."""
    return _DE_BRUIJN_POSITIONS[((mask & (_U(0) - mask)) * _DE_BRUIJN) >> _U(58)]


@numba.njit(**_JIT)
def _find_candidates(data, pixel_class, candidate_threshold, floor_table, chunk_low,
                     chunk_high, chunk_panel, panel_map, passing, passing_mask, candidates,
                     candidate_panel):
    """Flat indices (and panels), in raster order, of the pixels above their threshold.

    The frame is read in chunks of ``_CHUNK`` (64) pixels. The lowest threshold of a chunk's
    radius bins is ``min(floor_table[chunk_low], floor_table[chunk_high])`` (+inf without any
    pixel in the radius range); one vectorised compare per chunk gives the 64-bit mask of its
    pixels above it. Only those pixels (usually a few, in a few chunks: listed in ``passing``
    and ``passing_mask``) are then checked against their own (float64) thresholds.
    ``chunk_panel`` is the panel of a chunk's pixels, or -1 when the chunk spans panels (then
    ``panel_map`` is read).
    """
    n = data.shape[0]
    num_chunks = chunk_low.shape[0]
    num_full = n // _CHUNK
    num_passing = 0
    for chunk in range(num_full):
        a = floor_table[chunk_low[chunk]]
        b = floor_table[chunk_high[chunk]]
        floor = a if a < b else b
        start = chunk * _CHUNK
        mask = _U(0)
        for i in range(_CHUNK):
            mask |= _U(data[_U(start + i)] > floor) << _U(i)
        passing[num_passing] = chunk
        passing_mask[num_passing] = mask
        num_passing += 1 if mask != _U(0) else 0
    if num_full < num_chunks:  # the last, partial chunk: all its pixels are checked
        passing[num_passing] = num_full
        passing_mask[num_passing] = (_U(1) << _U(n - num_full * _CHUNK)) - _U(1)
        num_passing += 1
    # Load the pixel classes needed below first, with independent loads that the processor
    # overlaps, rather than one cache miss at a time in the loop below.
    touched = 0
    for p in range(num_passing):
        touched += pixel_class[_U(passing[p] * _CHUNK) + _lowest_bit(passing_mask[p])]
    candidates[0] = touched  # (overwritten below: keeps the loads)
    count = 0
    for p in range(num_passing):
        chunk = passing[p]
        start = _U(chunk * _CHUNK)
        panel = chunk_panel[chunk]
        mask = passing_mask[p]
        while mask != _U(0):
            u = start + _lowest_bit(mask)
            mask &= mask - _U(1)
            if data[u] > candidate_threshold[pixel_class[u]]:
                candidates[count] = u
                candidate_panel[count] = panel if panel >= 0 else panel_map[u]
                count += 1
    return count


@numba.njit(**_JIT)
def _root(parent, j):
    while parent[j] != j:
        parent[j] = parent[parent[j]]
        j = parent[j]
    return j


@numba.njit(**_JIT)
def _union(parent, a, b):
    """Joins the sets of a and b; the root of a set is its smallest element."""
    a = _root(parent, a)
    b = _root(parent, b)
    if a < b:
        parent[b] = a
    elif b < a:
        parent[a] = b


@numba.njit(**_JIT)
def _label_candidates(candidates, candidate_panel, num_candidates, n_fs, parent, component):
    """8-connected groups of candidates of the same panel; returns the number of groups.

    The candidates are in raster order, so the neighbours of a candidate that come before it
    (left, and the three above) are found by walking the candidate list itself: no label
    image. ``component[j]`` receives the group of candidate ``j``; groups are numbered in the
    raster order of their first pixel.
    """
    above = 0  # first candidate that may be an upper neighbour of the current one
    ss = 0
    row_start = 0
    for j in range(num_candidates):
        parent[j] = j
        index = candidates[j]
        while index >= row_start + n_fs:
            row_start += n_fs
            ss += 1
        fs = index - row_start
        panel = candidate_panel[j]
        if fs > 0 and j > 0 and candidates[j - 1] == index - 1 \
                and candidate_panel[j - 1] == panel:
            _union(parent, j, j - 1)
        if ss > 0:
            low = index - n_fs - (1 if fs > 0 else 0)
            high = index - n_fs + (1 if fs < n_fs - 1 else 0)
            while candidates[above] < low:
                above += 1
            other = above
            while other < j and candidates[other] <= high:
                if candidate_panel[other] == panel:
                    _union(parent, j, other)
                other += 1
    num_components = 0
    for j in range(num_candidates):
        r = _root(parent, j)
        if r == j:
            component[j] = num_components
            num_components += 1
        else:
            component[j] = component[r]
    return num_components


@numba.njit(**_JIT)
def _peaks_from_candidates(data, radius, pixel_class, panel_rects, n_fs, candidates,
                           candidate_panel, num_candidates, parent, component,
                           background_threshold, radial_mean, radial_sigma, adc_threshold,
                           minimum_snr, min_pixel_count, max_pixel_count, local_bg_radius,
                           count, sums, brightest, brightest_value, out):
    """Connected components, local background, acceptance and measurements.

    ``background_threshold`` is the threshold of each pixel class (NaN for the masked class:
    never background). ``count``, ``sums`` (capacity, 7), ``brightest`` (a candidate),
    ``brightest_value`` are per-group work arrays and ``out`` (7, capacity) float64 receives
    fs, ss, intensity, n, max, snr, radius. Returns the number of peaks written (all accepted
    peaks, in raster order of their first pixel), or minus the number of groups when it
    exceeds the capacity (nothing written).
    """
    num_components = _label_candidates(candidates, candidate_panel, num_candidates, n_fs,
                                       parent, component)
    if num_components > count.shape[0]:
        return -num_components
    for c in range(num_components):
        count[c] = 0
        brightest_value[c] = -np.inf
        for q in range(7):
            sums[c, q] = 0.0
    # Load the candidates' radii first, with independent loads (see _find_candidates).
    touched = np.float32(0.0)
    for j in range(num_candidates):
        touched += radius[_U(candidates[j])]
    out[0, 0] = touched  # (overwritten below, or unused: keeps the loads)
    ss = 0
    row_start = 0
    for j in range(num_candidates):
        c = component[j]
        index = candidates[j]
        while index >= row_start + n_fs:
            row_start += n_fs
            ss += 1
        fs = index - row_start
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
            brightest[c] = j
    # Acceptance.
    num_peaks = 0
    for c in range(num_components):
        n = count[c]
        if n < min_pixel_count or n > max_pixel_count:
            continue
        index = candidates[brightest[c]]
        ss = index // n_fs
        fs = index - ss * n_fs
        panel = candidate_panel[brightest[c]]
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
                u = _U(row + bfs)
                v = np.float64(data[u])
                # Background: not above its threshold, not NaN, not masked (branch-free: the
                # other pixels add 0.0, which leaves the sums as they are).
                background = v <= background_threshold[pixel_class[u]]
                bg_count += 1 if background else 0
                v = v if background else 0.0
                bg_sum += v
                bg_sum_sq += v * v
        if bg_count >= 2:
            bg = bg_sum / bg_count
            bg_sigma = math.sqrt(max(bg_sum_sq / bg_count - bg * bg, 0.0))
        else:
            k = pixel_class[index]  # a candidate: its class is its bin
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


@numba.njit(**_JIT)
def _find_peaks_kernel(data, pixel_class, panel_map, panel_rects, radius, n_fs, sample_pixels,
                       sample_slots, sample_start, iterations, clip, minimum_snr,
                       adc_threshold, min_pixel_count, max_pixel_count, local_bg_radius,
                       chunk_low, chunk_high, chunk_panel, levels, sample_buffer, radial_mean,
                       radial_sigma, bin_threshold, candidate_threshold,
                       background_threshold, floor_table, passing, passing_mask, candidates,
                       candidate_panel, parent, component, count, sums, brightest,
                       brightest_value, out):
    """All of peakfinder8 on one flat float32 frame: radial statistics and thresholds, candidate
    search, then :func:`_peaks_from_candidates` (whose return value it returns)."""
    num_bins = bin_threshold.shape[0]
    _radial_thresholds(data, sample_pixels, sample_slots, sample_start, iterations, clip,
                       minimum_snr, adc_threshold, sample_buffer, radial_mean, radial_sigma,
                       bin_threshold)
    # Thresholds per pixel class: bin k < num_bins (candidates), num_bins + k (outside the
    # radius range: background only), 2 * num_bins (masked).
    any_finite = False
    for k in range(num_bins):
        threshold = bin_threshold[k]
        candidate_threshold[k] = threshold
        background_threshold[k] = threshold
        background_threshold[num_bins + k] = threshold
        any_finite |= threshold < np.inf
    if not any_finite:
        return 0
    _chunk_floor_table(bin_threshold, levels, floor_table)
    num_candidates = _find_candidates(data, pixel_class, candidate_threshold, floor_table,
                                      chunk_low, chunk_high, chunk_panel, panel_map,
                                      passing, passing_mask, candidates, candidate_panel)
    return _peaks_from_candidates(
        data, radius, pixel_class, panel_rects, n_fs, candidates, candidate_panel,
        num_candidates, parent, component, background_threshold, radial_mean, radial_sigma,
        adc_threshold, minimum_snr, min_pixel_count, max_pixel_count, local_bg_radius, count,
        sums, brightest, brightest_value, out)


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

        # Candidate search chunks (see _find_candidates): the range of radius bins of each
        # chunk's pixels in the radius range, as the two entries of the range-minimum table
        # whose minimum is the chunk's lowest threshold, and the chunk's panel.
        size = n_ss * n_fs
        num_chunks = -(-size // _CHUNK)
        padded = np.full(num_chunks * _CHUNK, -1, dtype=np.int64)
        padded[:size] = np.where(eligible.ravel(), bins.ravel(), -1)
        padded = padded.reshape(num_chunks, _CHUNK)
        in_range = padded >= 0
        has_bins = in_range.any(axis=1)
        low_bin = np.where(in_range, padded, num_bins).min(axis=1)
        high_bin = padded.max(axis=1)
        span = np.where(has_bins, high_bin - low_bin + 1, 1)
        level = np.floor(np.log2(span)).astype(np.int64)
        level += (1 << (level + 1)) <= span  # exact floor(log2) whatever the rounding
        level -= (1 << level) > span
        self._levels = int(level.max()) + 1
        infinite = self._levels * num_bins  # the table's last entry, +inf
        self._chunk_low = np.where(has_bins, level * num_bins + low_bin,
                                   infinite).astype(np.int32)
        self._chunk_high = np.where(has_bins, level * num_bins + high_bin - (1 << level) + 1,
                                    infinite).astype(np.int32)
        padded_panel = np.full(num_chunks * _CHUNK, -1, dtype=np.int64)
        padded_panel[:size] = np.where(eligible.ravel(), panel_map.ravel(), -1)
        padded_panel = padded_panel.reshape(num_chunks, _CHUNK)
        first_panel = np.where(in_range, padded_panel, np.iinfo(np.int64).max).min(axis=1)
        last_panel = padded_panel.max(axis=1)
        self._chunk_panel = np.where(has_bins & (first_panel == last_panel), last_panel,
                                     -1).astype(np.int32)

        # Work buffers (reused by every frame; find_peaks allocates only the returned arrays).
        self._sample_buffer = np.empty(max(self._sample_pixels.size, 1), dtype=np.float32)
        self._radial_mean = np.zeros(num_bins, dtype=np.float64)
        self._radial_sigma = np.zeros(num_bins, dtype=np.float64)
        self._bin_threshold = np.zeros(num_bins, dtype=np.float64)
        self._candidate_threshold = np.full(2 * num_bins + 1, np.inf, dtype=np.float64)
        self._background_threshold = np.full(2 * num_bins + 1, np.nan, dtype=np.float64)
        self._floor_table = np.full(self._levels * num_bins + 1, np.inf, dtype=np.float32)
        self._passing = np.empty(num_chunks, dtype=np.int32)
        self._passing_mask = np.empty(num_chunks, dtype=np.uint64)
        self._candidates = np.empty(size, dtype=np.int32)
        self._candidate_panel = np.empty(size, dtype=np.int32)
        self._parent = np.empty(size, dtype=np.int32)
        self._component = np.empty(size, dtype=np.int32)
        self._allocate_groups(4096)

    def _allocate_groups(self, capacity: int) -> None:
        # Per-group work arrays and the output columns, for up to ``capacity`` groups.
        self._group_count = np.empty(capacity, dtype=np.int64)
        self._group_sums = np.empty((capacity, 7), dtype=np.float64)
        self._group_brightest = np.empty(capacity, dtype=np.int64)
        self._group_brightest_value = np.empty(capacity, dtype=np.float64)
        self._out = np.empty((7, capacity), dtype=np.float64)

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
        while True:
            num_peaks = _find_peaks_kernel(
                flat, self._pixel_class, self._panel_map, self._panel_rects, self._radius,
                self.shape[1], self._sample_pixels, self._sample_slots, self._sample_start,
                self.radial_stats_iterations, self.radial_stats_sigma_clip, self.minimum_snr,
                self.adc_threshold, self.min_pixel_count, self.max_pixel_count,
                self.local_bg_radius, self._chunk_low, self._chunk_high, self._chunk_panel,
                self._levels, self._sample_buffer, self._radial_mean, self._radial_sigma,
                self._bin_threshold, self._candidate_threshold, self._background_threshold,
                self._floor_table, self._passing, self._passing_mask, self._candidates,
                self._candidate_panel, self._parent, self._component, self._group_count,
                self._group_sums, self._group_brightest, self._group_brightest_value, self._out)
            if num_peaks >= 0:
                break
            self._allocate_groups(2 * -num_peaks)  # more groups than capacity: grow, redo
        columns = self._out[:, :num_peaks]
        if num_peaks > self.max_num_peaks:
            keep = np.argsort(-columns[2], kind="stable")[:self.max_num_peaks]
            columns = columns[:, np.sort(keep)]
        # Fresh arrays (the work buffers are reused by the next frame).
        return tuple.__new__(PeakList, [column.copy() for column in columns])
