# SPDX-License-Identifier: GPL-3.0-or-later
"""peakfinder8: Bragg peak detection on calibrated detector frames, as Cheetah, OM and CrystFEL.

The algorithm is peakfinder8 of A. Barty et al., "Cheetah: software for high-throughput
reduction and analysis of serial femtosecond X-ray diffraction data", J. Appl. Cryst. 47,
1118-1131 (2014), with the exact rules of the implementation Cheetah, OM and CrystFEL share
(OM's ``src/cython/peakfinder8.cpp``, CrystFEL's ``libcrystfel/src/peakfinder8.c``), read from
their source and written anew here; no code is taken. With the same parameters it finds the
peaks OM finds: ``tests/test_peakfinder8_agreement.py`` compares it with peak lists made by
OM 23.8.3 itself (``tests/data/README.md``). ``tests/peakfinder8_reference.py`` implements the
same rules slowly and plainly (the oracle of the tests).

Input: a calibrated frame, float (ss, fs) in any unit (photons in om), the radius map of the
reference implementations (``DetectorGeometry.peakfinder8_radius``: the radius at each pixel's
index position ``f = i``) and the detector's panels (rectangles of the slab).

1. **Mask and radius bins.** A pixel is used when it lies in a panel, has a radius
   ``min_res <= r <= max_res`` (OM's bounds) and is good in the bad pixel map. Its radius bin is
   ``rint(r)`` (halves to even). Pixels outside the mask take part in nothing below.
2. **Radial statistics**, ``radial_stats_iterations`` (5) times: per bin, the mean and the
   standard deviation ``sigma = sqrt(<v**2> - <v>**2)`` of the used pixels whose value lies
   strictly between ``low`` and ``high``, which start at -1e9 and 1e9 and then become
   ``mean -/+ minimum_snr * sigma`` (float32), ``high`` at least ``adc_threshold``. A bin left
   without values gets mean 0 and ``low, high = FLT_MIN, FLT_MAX``; a negative variance is kept
   as the "sigma", as the reference does. The final ``high`` is the bin's **threshold**.
3. **Candidates**: used pixels strictly above their bin's threshold.
4. **Groups**, panel by panel (panels ordered by their first row, then first column), each
   panel's pixels in raster order: a candidate not yet taken that is not on the panel's edge
   (first or last row or column) starts a group, which grows over candidates of the same panel,
   8-connected, with the reference's search: its list of group pixels lives for the whole frame,
   and reading one entry past the group's end (as the reference does) can attach candidates of
   an earlier group's shape elsewhere in the panel (``_grow_group``). Every pixel a search takes
   stays taken, whether or not its group becomes a peak.
5. **Local background** of a group of ``n`` pixels with ``min_pixel_count <= n <=
   max_pixel_count``: around the rounded (rint) centroid of ``value - radial mean``, the used
   pixels of the same panel below their threshold within the disc ``df**2 + ds**2 <= (2 *
   local_bg_radius)**2``, offsets ``-2R .. 2R - 1``: their mean ``offset`` and ``sigma`` (0.01
   when the variance is negative; without such pixels, the radial mean of the centre's bin and
   0.01), and their largest value ``background_max`` (at least 0).
6. **Acceptance and measurements**: ``intensity = sum(value - offset)``; position = the
   centroid weighted by the raw values, in the **pixel index convention** (the centre of pixel
   ``[j, i]`` is ``fs = i, ss = j``, as Cheetah and OM send them; CrystFEL adds 0.5 itself);
   ``max_pixel_intensity = max(0, max(value - offset))``; ``snr = intensity / sigma`` (0 when
   ``|sigma| <= 1e-10``). A group is a peak when ``snr >= minimum_snr``, ``max_pixel_intensity
   >= background_max - offset``, its position lies inside its panel, and neither the sum of the
   radial-mean-subtracted values nor that of the raw values is below 1e-10 in magnitude.
   ``radius`` (om's addition) is the same weighted mean of the pixels' radii.
7. The first ``max_num_peaks`` peaks, in the order of step 4, are returned.

Where om differs, on purpose: non-finite pixel values (NaN for invalid pixels, inf) are never
used anywhere (the reference lets +inf be a peak); sums are float64 (the reference's float32
sums round differently); a centroid outside its panel is moved to the panel's edge for the
background disc (the reference reads outside its arrays). None of these changes a peak on
ordinary frames.

Speed (figures: docs/performance.md): frame-independent work is done at construction, and one
numba-compiled call (single thread, GIL released) does the rest. Step 2 costs one scatter pass
over the frame, not five: the pixels inside a per-bin *core* range (chosen from the previous
frame's statistics) are summed once; only the few outside it (*tails*: bright pixels, the low
tail, NaN) are re-examined per iteration. Each iteration checks that its ``(low, high)``
contains the whole core range, and recomputes a bin from all its pixels when it does not, so
the result is exactly that of step 2 whatever the frame. When every bin's threshold is above its
core range, the candidates are among the tails, so step 3 reads only the tails. A
``Peakfinder8PeakDetection`` keeps work buffers and the core ranges, so one instance must not
run ``find_peaks`` in two threads at once.
"""

import math
from typing import NamedTuple, Sequence

import numba
import numpy as np

from om.lib.exceptions import OmConfigurationError, OmInvalidDataError

__all__ = ["DEFAULT_PARAMETERS", "PeakList", "Peakfinder8PeakDetection"]

#: Defaults for calibrated JUNGFRAU frames in photon units (the parameters OM users carry: on
#: the real module of tests/ assembled as a JUNGFRAU 1M they find the ~380 Bragg spots per frame
#: that OM finds with them).
DEFAULT_PARAMETERS = {
    "adc_threshold": 5.0,
    "minimum_snr": 5.0,
    "min_pixel_count": 2,
    "max_pixel_count": 150,
    "local_bg_radius": 4,
    "min_res": 0.0,
    "max_res": 10000.0,
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
        intensity: integrated intensity above the local background, frame units.
        num_pixels: number of pixels of the peak.
        max_pixel_intensity: value of the brightest pixel above the local background (at
            least 0), frame units (OM's ``max_pixel_intensity``).
        snr: signal-to-noise ratio, ``intensity`` over the local background's sigma.
        radius: value-weighted mean radius of the peak's pixels, pixels from the beam.
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
_U = np.uint64  # indices known to be >= 0: numba skips the negative-index wraparound
_CHUNK = 64  # pixels per chunk of the tail search (one 64-bit mask)
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_FLT_MIN = np.float32(np.finfo(np.float32).tiny)
_INF32 = np.float32(np.inf)
# Values summed once (the core) stay within +/- _CORE_LIMIT, so that adding and then removing a
# tail value from a float64 sum loses nothing that matters.
_CORE_LIMIT = 65536.0
# The reference's group search visits the pixel itself, then the row above, the left and right
# neighbours, and the row below, in this order.
_SEARCH_FS = np.array([0, -1, 0, 1, -1, 1, -1, 0, 1], dtype=np.int64)
_SEARCH_SS = np.array([0, -1, -1, -1, 0, 0, 1, 1, 1], dtype=np.int64)

# Lowest set bit of a uint64 m: _DE_BRUIJN_POSITIONS[((m & -m) * _DE_BRUIJN) >> 58].
_DE_BRUIJN = np.uint64(0x03F79D71B4CA8B09)
_DE_BRUIJN_POSITIONS = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DE_BRUIJN_POSITIONS[((int(_DE_BRUIJN) << _bit) & 0xFFFFFFFFFFFFFFFF) >> 58] = _bit
del _bit


@numba.njit(**_JIT)
def _lowest_bit(mask):
    """Position (0-63) of the lowest set bit of a nonzero uint64 (de Bruijn multiplication)."""
    return _DE_BRUIJN_POSITIONS[((mask & (_U(0) - mask)) * _DE_BRUIJN) >> _U(58)]


@numba.njit(**_JIT)
def _range_min_table(values, levels, table):
    """Sparse table: ``table[level * num_bins + k]`` = min of ``values[k : k + 2**level]``.

    The table's last entry is left as it is (+inf: the entry of chunks without bins).
    """
    num_bins = values.shape[0]
    for k in range(num_bins):
        table[k] = values[k]
    for level in range(1, levels):
        half = 1 << (level - 1)
        base = level * num_bins
        for k in range(num_bins - 2 * half + 1):
            a = table[base - num_bins + k]
            b = table[base - num_bins + k + half]
            table[base + k] = a if a < b else b


@numba.njit(**_JIT)
def _scan_frame(data, pixel_class, masked_class, core_low, core_high, high_table,
                negative_low_table, chunk_low, chunk_high, tails, tail_class, tail_value, sums):
    """The one pass over the frame: per class, the sum and sum of squares of all values
    (float64, as one complex number: one memory update per pixel), and the flat indices, in
    raster order, of the used pixels outside their bin's core range (the tails), with their
    bins and values (so that nothing later reads the frame at random for them). Returns the
    number of tails.

    The core range of bin k is ``core_low[k] <= value < core_high[k]``. Per chunk of 64 pixels,
    one vectorised comparison flags the pixels outside the loosest core range of the chunk's
    bins (the two range-minimum tables give it; NaN is always flagged); only those are checked
    against their own bin. A NaN or huge value spoils its bin's sums; ``_core_sums`` then sums
    that bin's core again.
    """
    for k in range(sums.shape[0]):
        sums[k] = 0.0
    n = data.shape[0]
    num_full = n // _CHUNK
    count = 0
    for chunk in range(num_full + 1):
        start = chunk * _CHUNK
        if chunk < num_full:
            a = high_table[chunk_low[chunk]]
            b = high_table[chunk_high[chunk]]
            high = a if a < b else b
            a = negative_low_table[chunk_low[chunk]]
            b = negative_low_table[chunk_high[chunk]]
            low = -(a if a < b else b)
            mask = _U(0)
            for i in range(_CHUNK):
                value = data[_U(start + i)]
                inside = (value >= low) & (value < high)
                mask |= (_U(1) - _U(inside)) << _U(i)
            stop = start + _CHUNK
        elif n > start:  # the last, partial chunk: every pixel is checked
            mask = (_U(1) << _U(n - start)) - _U(1)
            stop = n
        else:
            break
        for u in range(start, stop):
            value = np.float64(data[_U(u)])
            sums[pixel_class[_U(u)]] += complex(value, value * value)
        while mask != _U(0):
            u = _U(start) + _lowest_bit(mask)
            mask &= mask - _U(1)
            k = pixel_class[u]
            if k == masked_class:
                continue
            value = data[u]
            if not ((value >= core_low[k]) & (value < core_high[k])):
                tails[count] = u
                tail_class[count] = k
                tail_value[count] = value
                count += 1
    return count


@numba.njit(**_JIT)
def _core_sums(data, bin_sums, sorted_value, first_tail, last_tail, bin_pixels, first_pixel,
               last_pixel, core_low, core_high):
    """Sum and sum of squares of one bin's core: the bin's sums less its tails, or, when a
    tail is not finite or too large to subtract without losing the core's digits, the core's
    pixels summed again."""
    total = bin_sums.real
    total_sq = bin_sums.imag
    for t in range(first_tail, last_tail):
        value = np.float64(sorted_value[t])
        if not ((value > -_CORE_LIMIT) & (value < _CORE_LIMIT)):
            total = 0.0
            total_sq = 0.0
            for j in range(first_pixel, last_pixel):
                value = data[_U(bin_pixels[j])]
                if (value >= core_low) & (value < core_high):
                    total += np.float64(value)
                    total_sq += np.float64(value) * np.float64(value)
            return total, total_sq
        total -= value
        total_sq -= value * value
    return total, total_sq


@numba.njit(**_JIT)
def _bin_statistics(count, total, total_sq, minimum_snr, adc_threshold):
    """(mean, sigma, low, high) of one bin from its sums, as step 2 defines them."""
    if count == 0:
        return 0.0, 0.0, _FLT_MIN, _FLT_MAX
    mean = total / count
    variance = total_sq / count - mean * mean
    sigma = math.sqrt(variance) if variance >= 0.0 else variance
    high = np.float32(mean + minimum_snr * sigma)
    adc = np.float32(adc_threshold)
    return mean, sigma, np.float32(mean - minimum_snr * sigma), high if high > adc else adc


@numba.njit(**_JIT)
def _radial_statistics(data, tail_class, tail_value, num_tails, sums, static_count, core_low,
                       core_high, bin_pixels, bin_start, iterations, minimum_snr,
                       adc_threshold, tail_start, sorted_value, radial_mean, radial_sigma,
                       threshold, leaky):
    """Step 2 for every bin, from the core sums and the tails (see the module docstring).

    ``leaky[k]`` is set when core pixels of bin k may be candidates (its threshold is below
    its core's upper end). Returns the number of bins summed again from all their pixels.
    """
    num_bins = radial_mean.shape[0]
    for k in range(num_bins + 1):
        tail_start[k] = 0
    for t in range(num_tails):
        tail_start[tail_class[t] + 1] += 1
    for k in range(num_bins):
        tail_start[k + 1] += tail_start[k]
    for t in range(num_tails):  # the tails' values grouped by bin, raster order kept
        k = tail_class[t]
        sorted_value[tail_start[k]] = tail_value[t]
        tail_start[k] += 1
    for k in range(num_bins - 1, -1, -1):
        tail_start[k + 1] = tail_start[k]
    tail_start[0] = 0
    whole_bins = 0
    for k in range(num_bins):
        core_total, core_total_sq = _core_sums(data, sums[k], sorted_value, tail_start[k],
                                               tail_start[k + 1], bin_pixels, bin_start[k],
                                               bin_start[k + 1], core_low[k], core_high[k])
        core_count = static_count[k] - (tail_start[k + 1] - tail_start[k])
        low = np.float32(-1e9)
        high = np.float32(1e9)
        whole_bin = False
        mean = 0.0
        sigma = 0.0
        last = (-1, 0.0, 0.0)
        for _ in range(iterations):
            whole_bin |= not ((low < core_low[k]) & (core_high[k] <= high))
            count = 0
            total = 0.0
            total_sq = 0.0
            if whole_bin:  # the band cuts into the core: every pixel of the bin
                for j in range(bin_start[k], bin_start[k + 1]):
                    value = data[_U(bin_pixels[j])]
                    if (value > low) & (value < high):
                        count += 1
                        total += np.float64(value)
                        total_sq += np.float64(value) * np.float64(value)
            else:
                count = core_count
                total = core_total
                total_sq = core_total_sq
                for t in range(tail_start[k], tail_start[k + 1]):
                    value = sorted_value[t]
                    if (value > low) & (value < high):
                        count += 1
                        total += np.float64(value)
                        total_sq += np.float64(value) * np.float64(value)
            if (count, total, total_sq) == last:
                break  # the same sums again: every further round repeats this one
            last = (count, total, total_sq)
            mean, sigma, low, high = _bin_statistics(count, total, total_sq, minimum_snr,
                                                     adc_threshold)
        radial_mean[k] = mean
        radial_sigma[k] = sigma
        threshold[k] = high
        leaky[k] = core_count > 0 and core_high[k] > high
        whole_bins += whole_bin
    return whole_bins


@numba.njit(**_JIT)
def _next_core_ranges(radial_mean, radial_sigma, minimum_snr, adc_threshold, core_low,
                      core_high):
    """Core ranges for the next frame: 3/4 of the clipping band of this frame's statistics,
    above ``adc_threshold`` (only speed depends on them, never the result)."""
    for k in range(radial_mean.shape[0]):
        sigma = radial_sigma[k]
        if not sigma > 0.0:  # no data, or a degenerate bin: no core
            core_low[k] = _INF32
            core_high[k] = -_INF32
            continue
        reach = 0.75 * minimum_snr * sigma
        low = max(radial_mean[k] - reach, -_CORE_LIMIT)
        high = min(max(radial_mean[k] + reach, adc_threshold), _CORE_LIMIT)
        core_low[k] = np.float32(low)
        core_high[k] = np.float32(high)
        if core_low[k] < low:  # rounded down: keep the core inside the band
            core_low[k] = np.nextafter(core_low[k], _INF32)
        if core_high[k] > high:
            core_high[k] = np.nextafter(core_high[k], -_INF32)


@numba.njit(**_JIT)
def _mark_candidates(data, pixel_threshold, tails, tail_class, tail_value, num_tails, leaky,
                     core_low, core_high, bin_pixels, bin_start, candidate, marked):
    """Step 3: sets ``candidate[u] = 1`` for every candidate (used, above its bin's threshold,
    finite) and lists them in ``marked``, in raster order. Returns their number."""
    count = 0
    for t in range(num_tails):
        value = tail_value[t]
        if value > pixel_threshold[tail_class[t]] and value < _INF32:
            candidate[_U(tails[t])] = 1
            marked[count] = tails[t]
            count += 1
    from_tails = count
    for k in range(leaky.shape[0]):  # core pixels above the threshold (rare)
        if not leaky[k]:
            continue
        for j in range(bin_start[k], bin_start[k + 1]):
            u = _U(bin_pixels[j])
            value = data[u]
            if (value >= core_low[k]) & (value < core_high[k]) and value > pixel_threshold[k]:
                candidate[u] = 1
                marked[count] = bin_pixels[j]
                count += 1
    if count > from_tails:
        marked[:count].sort()
    return count


@numba.njit(**_JIT)
def _seeds(marked, num_marked, seed_rank, num_panels, panel_count, seeds):
    """The candidates that may start a group (not on a panel edge), in search order: by panel
    rank, then raster order (a stable counting sort of the raster-ordered ``marked``). Returns
    their number."""
    for r in range(num_panels + 1):
        panel_count[r] = 0
    for i in range(num_marked):
        panel_count[seed_rank[_U(marked[i])] + 1] += 1  # rank -1 (edges) counted in slot 0
    on_edges = panel_count[0]
    for r in range(num_panels):
        panel_count[r + 1] += panel_count[r]
    for i in range(num_marked):
        r = seed_rank[_U(marked[i])]
        if r >= 0:
            seeds[panel_count[r] - on_edges] = marked[i]
            panel_count[r] += 1
    return num_marked - on_edges


@numba.njit(**_JIT)
def _grow_group(candidate, seed, rect, rank, n_fs, slot_fs, slot_ss, slot_dead, slots_used,
                group):
    """Step 4: grows the group of ``seed`` with the reference's search; returns (size,
    slots_used).

    ``slot_fs``, ``slot_ss`` are the frame's list of panel-relative positions; entries from
    ``slots_used`` on read as 0 (the reference's list starts zeroed each frame). For each entry
    ``p = 0 .. size`` (``size`` itself included: an entry left by an earlier group, or 0) the
    pixel and its 8 neighbours are visited in the reference's order, and each candidate not yet
    taken (``candidate[u] == 1``) is appended (position at entry ``size``, flat index in
    ``group``) and taken (``candidate[u] = 0``). The walk
    repeats while the group grows; a repeat can only add pixels when an append replaced the
    entry being read (appending at ``p == size``), so otherwise it is skipped.

    ``slot_dead[p] == rank + 1`` records that entry ``p``, read past a group's end in this
    panel, added nothing: as long as it is not written again it cannot add anything later in
    the panel either (candidates do not change, taken pixels stay taken), so it is not read
    again.
    """
    min_fs, max_fs, min_ss, max_ss = rect[0], rect[1], rect[2], rect[3]
    width = max_fs - min_fs + 1
    height = max_ss - min_ss + 1
    seed_ss = seed // n_fs
    slot_fs[0] = seed - seed_ss * n_fs - min_fs
    slot_ss[0] = seed_ss - min_ss
    slot_dead[0] = 0
    slots_used = max(slots_used, 1)
    size = 0
    while True:
        size_before = size
        replaced = False
        p = 0
        while p <= size:
            past_end = p == size
            if past_end and slot_dead[p] == rank + 1:
                p += 1
                continue
            for k in range(9):
                local_fs = (slot_fs[p] if p < slots_used else 0) + _SEARCH_FS[k]
                local_ss = (slot_ss[p] if p < slots_used else 0) + _SEARCH_SS[k]
                if local_fs < 0 or local_fs >= width or local_ss < 0 or local_ss >= height:
                    continue
                u = _U((local_ss + min_ss) * n_fs + local_fs + min_fs)
                if candidate[u] == 0:
                    continue
                slot_fs[size] = local_fs
                slot_ss[size] = local_ss
                slot_dead[size] = 0
                slots_used = max(slots_used, size + 1)
                replaced |= p == size
                candidate[u] = 0
                group[size] = u
                size += 1
            if past_end and size == p:  # read past the end, added nothing
                slot_dead[p] = rank + 1
            p += 1
        if size == size_before or not replaced:
            return size, slots_used


@numba.njit(fastmath={"reassoc", "contract", "nsz", "arcp"}, **_JIT)
def _background_row(data, pixel_class, pixel_threshold, start, stop):
    """Count, sum, sum of squares (float64) and maximum (at least 0) of the background pixels
    of ``data[start:stop]``: below their bin's threshold, used (the masked class's threshold is
    NaN), finite. Vectorised: its sums may be reordered."""
    count = 0
    total = 0.0
    total_sq = 0.0
    largest = 0.0
    for u in range(start, stop):
        value = data[_U(u)]
        background = (value < pixel_threshold[pixel_class[_U(u)]]) & (value > -_INF32)
        v = np.float64(value) if background else 0.0
        count += 1 if background else 0
        total += v
        total_sq += v * v
        largest = max(largest, v)
    return count, total, total_sq, largest


@numba.njit(**_JIT)
def _measure_group(data, radius, pixel_class, center_bin, radial_mean, pixel_threshold, group,
                   size, rect, n_fs, disc_reach, settings, out, index):
    """Steps 5 and 6 for one group; writes the peak into ``out[:, index]`` when accepted and
    returns whether it was."""
    if size < settings.min_pixel_count or size > settings.max_pixel_count:
        return False
    min_fs, max_fs, min_ss, max_ss = rect[0], rect[1], rect[2], rect[3]
    weight_sum = 0.0
    weight_fs = 0.0
    weight_ss = 0.0
    raw_sum = 0.0
    raw_fs = 0.0
    raw_ss = 0.0
    raw_radius = 0.0
    brightest = -np.inf
    for j in range(size):
        u = _U(group[j])
        ss = group[j] // n_fs
        fs = group[j] - ss * n_fs
        value = np.float64(data[u])
        weight = value - radial_mean[pixel_class[u]]
        weight_sum += weight
        weight_fs += weight * fs
        weight_ss += weight * ss
        raw_sum += value
        raw_fs += value * fs
        raw_ss += value * ss
        raw_radius += value * radius[u]
        brightest = max(brightest, value)
    if abs(weight_sum) < 1e-10 or abs(raw_sum) < 1e-10:
        return False
    centre_fs = min(max(int(np.rint(weight_fs / abs(weight_sum))), min_fs), max_fs)
    centre_ss = min(max(int(np.rint(weight_ss / abs(weight_sum))), min_ss), max_ss)
    width = 2 * settings.local_bg_radius
    count = 0
    total = 0.0
    total_sq = 0.0
    background_max = 0.0
    for d_ss in range(max(-width, min_ss - centre_ss), min(width, max_ss - centre_ss + 1)):
        reach = disc_reach[d_ss + width]  # the disc's row: -reach <= d_fs < width, <= reach
        first_fs = max(centre_fs - reach, min_fs)
        last_fs = min(centre_fs + min(reach, width - 1), max_fs)
        row = (centre_ss + d_ss) * n_fs
        n, row_total, row_total_sq, row_max = _background_row(
            data, pixel_class, pixel_threshold, row + first_fs, row + last_fs + 1)
        count += n
        total += row_total
        total_sq += row_total_sq
        background_max = max(background_max, row_max)
    if count > 0:
        offset = total / count
        variance = total_sq / count - offset * offset
        local_sigma = math.sqrt(variance) if variance >= 0.0 else 0.01
    else:
        offset = radial_mean[center_bin[_U(centre_ss * n_fs + centre_fs)]]
        local_sigma = 0.01
    intensity = raw_sum - size * offset
    peak_max = max(0.0, brightest - offset)
    snr = intensity / local_sigma if abs(local_sigma) > 1e-10 else 0.0
    if snr < settings.minimum_snr or peak_max < background_max - offset:
        return False
    peak_fs = raw_fs / abs(raw_sum)
    peak_ss = raw_ss / abs(raw_sum)
    if peak_fs < min_fs or peak_fs > max_fs or peak_ss < min_ss or peak_ss > max_ss:
        return False
    out[0, index] = peak_fs
    out[1, index] = peak_ss
    out[2, index] = intensity
    out[3, index] = size
    out[4, index] = peak_max
    out[5, index] = snr
    out[6, index] = raw_radius / abs(raw_sum)
    return True


def _disc_reach(width: int) -> np.ndarray:
    """int64 (2 * width,): for each row offset ``d_ss = -width .. width - 1``, the largest
    ``d_fs`` with ``d_fs**2 + d_ss**2 <= width**2`` (the reference's background disc)."""
    d_ss = np.arange(-width, width)
    return np.array([math.isqrt(width * width - d * d) for d in d_ss], dtype=np.int64)


class _Settings(NamedTuple):
    """The scalar parameters of the kernel."""

    adc_threshold: float
    minimum_snr: float
    min_pixel_count: int
    max_pixel_count: int
    local_bg_radius: int
    iterations: int
    n_fs: int
    masked_class: int
    num_panels: int


class _Tables(NamedTuple):
    """Frame-independent arrays (flat arrays have one entry per slab pixel)."""

    pixel_class: np.ndarray  # uint16/int32: radius bin of used pixels, masked_class otherwise
    center_bin: np.ndarray  # int32: radius bin of every panel pixel (0 outside panels)
    radius: np.ndarray  # float32: the radius map (0 outside panels)
    seed_rank: np.ndarray  # int32: panel rank of pixels that may seed a group, else -1
    panel_rank: np.ndarray  # int32: panel rank of every pixel, -1 outside panels
    rects: np.ndarray  # int64 (num_panels, 4): min_fs, max_fs, min_ss, max_ss by rank
    static_count: np.ndarray  # int64 (num_bins,): used pixels per bin
    bin_pixels: np.ndarray  # int32: the used pixels, by bin, raster order within a bin
    bin_start: np.ndarray  # int64 (num_bins + 1,): each bin's slice of bin_pixels
    chunk_low: np.ndarray  # int32 per chunk: range-minimum table entries of the chunk's bins
    chunk_high: np.ndarray
    levels: int
    disc_reach: np.ndarray  # int64 (4R,): the background disc's half width at d_ss = i - 2R


class _Buffers(NamedTuple):
    """Work arrays reused by every frame, and the core ranges kept from frame to frame."""

    core_low: np.ndarray  # float32 (num_bins,)
    core_high: np.ndarray
    negative_low: np.ndarray  # float32 (num_bins,): -core_low
    high_table: np.ndarray  # float32 range-minimum tables of core_high and -core_low
    negative_low_table: np.ndarray
    tails: np.ndarray  # int32 (n,): flat indices of the tails
    tail_class: np.ndarray  # int32 (n,): their bins
    tail_value: np.ndarray  # float32 (n,): their values
    sorted_value: np.ndarray  # float32 (n,): their values grouped by bin
    tail_start: np.ndarray  # int64 (num_bins + 1,)
    sums: np.ndarray  # complex128 (num_bins + 1,)
    radial_mean: np.ndarray  # float64 (num_bins,)
    radial_sigma: np.ndarray
    pixel_threshold: np.ndarray  # float32 (num_bins + 1,): per class; NaN for masked pixels
    leaky: np.ndarray  # bool (num_bins,)
    marked: np.ndarray  # int32 (n,): the candidates, raster order
    seeds: np.ndarray  # int32 (n,)
    panel_count: np.ndarray  # int64 (num_panels + 1,)
    candidate: np.ndarray  # uint8 (n,): 1 = a candidate not yet in a group; zero between frames
    slot_fs: np.ndarray  # int32 (n + 1,)
    slot_ss: np.ndarray
    slot_dead: np.ndarray  # int32 (n + 1,): zero between frames
    group: np.ndarray  # int32 (n,)
    out: np.ndarray  # float64 (7, capacity)


@numba.njit(**_JIT)
def _find_peaks_kernel(data, tables, buffers, settings):
    """All of peakfinder8 on one flat float32 frame. Returns the number of peaks written into
    ``buffers.out`` (in search order), or minus the number of seeds when ``out`` is too small
    (nothing written; the caller grows it and calls again)."""
    b = buffers
    t = tables
    num_bins = b.radial_mean.shape[0]
    _range_min_table(b.core_high, t.levels, b.high_table)
    for k in range(num_bins):
        b.negative_low[k] = -b.core_low[k]
    _range_min_table(b.negative_low, t.levels, b.negative_low_table)
    num_tails = _scan_frame(data, t.pixel_class, settings.masked_class, b.core_low,
                            b.core_high, b.high_table, b.negative_low_table, t.chunk_low,
                            t.chunk_high, b.tails, b.tail_class, b.tail_value, b.sums)
    _radial_statistics(data, b.tail_class, b.tail_value, num_tails, b.sums, t.static_count,
                       b.core_low, b.core_high, t.bin_pixels, t.bin_start, settings.iterations,
                       settings.minimum_snr, settings.adc_threshold, b.tail_start,
                       b.sorted_value, b.radial_mean, b.radial_sigma, b.pixel_threshold,
                       b.leaky)
    num_marked = _mark_candidates(data, b.pixel_threshold, b.tails, b.tail_class, b.tail_value,
                                  num_tails, b.leaky, b.core_low, b.core_high, t.bin_pixels,
                                  t.bin_start, b.candidate, b.marked)
    num_seeds = _seeds(b.marked, num_marked, t.seed_rank, settings.num_panels, b.panel_count,
                       b.seeds)
    _next_core_ranges(b.radial_mean, b.radial_sigma, settings.minimum_snr,
                      settings.adc_threshold, b.core_low, b.core_high)
    if num_seeds > b.out.shape[1]:
        for i in range(num_marked):
            b.candidate[_U(b.marked[i])] = 0
        return -num_seeds
    num_peaks = 0
    slots_used = 0
    taken_count = 0
    for i in range(num_seeds):
        seed = b.seeds[i]
        if b.candidate[_U(seed)] == 0:
            continue  # taken by an earlier group
        rank = t.panel_rank[_U(seed)]
        rect = t.rects[rank]
        size, slots_used = _grow_group(b.candidate, seed, rect, rank, settings.n_fs, b.slot_fs,
                                       b.slot_ss, b.slot_dead, slots_used,
                                       b.group[taken_count:])
        if _measure_group(data, t.radius, t.pixel_class, t.center_bin, b.radial_mean,
                          b.pixel_threshold, b.group[taken_count:], size, rect, settings.n_fs,
                          t.disc_reach, settings, b.out, num_peaks):
            num_peaks += 1
        taken_count += size
    for i in range(num_marked):  # leave the candidate map zeroed for the next frame
        b.candidate[_U(b.marked[i])] = 0
    for p in range(min(slots_used + 1, b.slot_dead.shape[0])):
        b.slot_dead[p] = 0
    return num_peaks


def _threshold_checks(adc_threshold, minimum_snr, min_pixel_count, max_pixel_count,
                      max_num_peaks) -> tuple[tuple[str, bool], ...]:
    """(key, valid) of the parameters that need no new tables."""
    return (
        ("adc_threshold", math.isfinite(adc_threshold)),
        ("minimum_snr", math.isfinite(minimum_snr) and minimum_snr > 0),
        ("min_pixel_count", int(min_pixel_count) >= 1),
        ("max_pixel_count", int(max_pixel_count) >= int(min_pixel_count)),
        ("max_num_peaks", int(max_num_peaks) >= 0),
    )


def _check(checks) -> None:
    """Raises OmConfigurationError naming the first invalid key of (key, valid) pairs."""
    for key, ok in checks:
        if not ok:
            raise OmConfigurationError(f"peakfinder8: invalid {key}")


class Peakfinder8PeakDetection:
    """peakfinder8 with the rules of Cheetah, OM and CrystFEL; see the module docstring.

    Args:
        radius_map: float (ss, fs) radius of each pixel's index position in pixels from the
            beam (``DetectorGeometry.peakfinder8_radius``, the reference implementations' radius
            map); NaN = no pixel.
        panels: the panels as ``(min_fs, max_fs, min_ss, max_ss)`` inclusive rectangles of the
            slab (``DetectorGeometry.panel_rectangles``); they must not overlap. Pixels outside
            every panel are ignored. Groups never cross a panel edge.
        adc_threshold: lowest threshold, frame units (photons in om).
        minimum_snr: width of the radial statistics' clipping band and of the thresholds, in
            sigmas, and the lowest accepted signal-to-noise ratio.
        min_pixel_count, max_pixel_count: allowed peak sizes, pixels.
        local_bg_radius: the local background is taken within ``2 * local_bg_radius`` pixels
            of the peak (>= 1).
        min_res, max_res: radius range of the pixels used, pixels from the beam (inclusive).
        max_num_peaks: at most this many peaks are returned (the first found).
        bad_pixel_map: optional uint8-like (ss, fs): nonzero good, 0 bad (never used).
        radial_stats_iterations: number of radial statistics computations (>= 1; 5 in the
            reference implementations).

    Raises:
        OmConfigurationError: when a parameter is out of range, a panel lies outside the radius
            map or overlaps another, or the bad pixel map has another shape.
    """

    def __init__(self, *, radius_map: np.ndarray, panels: Sequence[Sequence[int]],
                 adc_threshold: float, minimum_snr: float, min_pixel_count: int,
                 max_pixel_count: int, local_bg_radius: int, min_res: float, max_res: float,
                 max_num_peaks: int, bad_pixel_map: np.ndarray | None = None,
                 radial_stats_iterations: int = 5) -> None:
        radius_map = np.asarray(radius_map, dtype=np.float32)
        if radius_map.ndim != 2:
            raise OmConfigurationError(f"peakfinder8: radius_map must be 2D, got shape "
                                       f"{radius_map.shape}")
        _check((
            *_threshold_checks(adc_threshold, minimum_snr, min_pixel_count, max_pixel_count,
                               max_num_peaks),
            ("local_bg_radius", 1 <= int(local_bg_radius) <= 1000),
            ("min_res", not math.isnan(min_res)),
            ("max_res", not math.isnan(max_res) and max_res >= min_res),
            ("radial_stats_iterations", int(radial_stats_iterations) >= 1),
        ))
        self.shape = radius_map.shape
        self.max_num_peaks = int(max_num_peaks)
        n_ss, n_fs = self.shape
        size = n_ss * n_fs
        rects = np.asarray(panels, dtype=np.int64).reshape(-1, 4)
        if rects.shape[0] == 0:
            raise OmConfigurationError("peakfinder8: no panels")
        # The reference walks the panels in the order of their first row, then column.
        rects = rects[np.lexsort((rects[:, 0], rects[:, 2]))]
        panel_rank = np.full(self.shape, -1, dtype=np.int32)
        seed_rank = np.full(self.shape, -1, dtype=np.int32)
        for rank, (min_fs, max_fs, min_ss, max_ss) in enumerate(rects):
            if not (0 <= min_fs <= max_fs < n_fs and 0 <= min_ss <= max_ss < n_ss):
                raise OmConfigurationError(
                    f"peakfinder8: panel ({min_fs}-{max_fs}, {min_ss}-{max_ss}) is outside "
                    f"the {self.shape} radius map")
            region = panel_rank[min_ss:max_ss + 1, min_fs:max_fs + 1]
            if np.any(region >= 0):
                raise OmConfigurationError(
                    f"peakfinder8: panel ({min_fs}-{max_fs}, {min_ss}-{max_ss}) overlaps another")
            region[...] = rank
            seed_rank[min_ss + 1:max_ss, min_fs + 1:max_fs] = rank  # edges never seed
        has_radius = (panel_rank >= 0) & np.isfinite(radius_map) & (radius_map >= 0)
        used = has_radius & (radius_map >= min_res) & (radius_map <= max_res)
        if bad_pixel_map is not None:
            bad_pixel_map = np.asarray(bad_pixel_map)
            if bad_pixel_map.shape != self.shape:
                raise OmConfigurationError(
                    f"peakfinder8: bad pixel map shape {bad_pixel_map.shape} is not the "
                    f"detector's {self.shape}")
            used &= bad_pixel_map != 0
        bins = np.zeros(self.shape, dtype=np.int64)
        bins[has_radius] = np.rint(radius_map[has_radius]).astype(np.int64)
        num_bins = int(bins.max()) + 1
        if num_bins + 1 > np.iinfo(np.int32).max // 2:
            raise OmConfigurationError("peakfinder8: radius map values too large")
        class_dtype = np.uint16 if num_bins < 65535 else np.int32
        pixel_class = np.where(used, bins, num_bins).astype(class_dtype).ravel()
        self.static_mask = used  # bool (ss, fs): the pixels peakfinder8 uses

        flat_used = np.flatnonzero(used.ravel())
        # Raster order within a bin; 16-bit keys get numpy's radix sort (a tenth of the time of
        # 64-bit keys for a 1M frame: the parameter tweaker rebuilds these tables).
        order = np.argsort(bins.ravel()[flat_used].astype(class_dtype), kind="stable")
        bin_pixels = flat_used[order].astype(np.int32)
        static_count = np.bincount(bins.ravel()[flat_used], minlength=num_bins).astype(np.int64)
        bin_start = np.concatenate([[0], np.cumsum(static_count)]).astype(np.int64)

        # Per chunk of 64 pixels: the range of bins of its used pixels, as the two entries of a
        # range-minimum table whose minimum covers that range (+inf entry: no used pixel).
        num_chunks = -(-size // _CHUNK)
        padded = np.full(num_chunks * _CHUNK, -1, dtype=np.int64)
        padded[:size] = np.where(used.ravel(), bins.ravel(), -1)
        padded = padded.reshape(num_chunks, _CHUNK)
        in_range = padded >= 0
        has_bins = in_range.any(axis=1)
        low_bin = np.where(in_range, padded, num_bins).min(axis=1)
        high_bin = padded.max(axis=1)
        span = np.where(has_bins, high_bin - low_bin + 1, 1)
        level = np.floor(np.log2(span)).astype(np.int64)
        level += (1 << (level + 1)) <= span  # exact floor(log2) whatever the rounding
        level -= (1 << level) > span
        levels = int(level.max()) + 1
        infinite = levels * num_bins  # the tables' last entry, +inf
        chunk_low = np.where(has_bins, level * num_bins + low_bin, infinite).astype(np.int32)
        chunk_high = np.where(has_bins, level * num_bins + high_bin - (1 << level) + 1,
                              infinite).astype(np.int32)

        self._tables = _Tables(
            pixel_class=np.ascontiguousarray(pixel_class),
            center_bin=np.ascontiguousarray(bins.ravel().astype(np.int32)),
            radius=np.ascontiguousarray(np.where(has_radius, radius_map, 0).ravel()
                                        .astype(np.float32)),
            seed_rank=np.ascontiguousarray(np.where(used, seed_rank, -1).ravel()),
            panel_rank=np.ascontiguousarray(panel_rank.ravel()),
            rects=np.ascontiguousarray(rects),
            static_count=static_count, bin_pixels=bin_pixels, bin_start=bin_start,
            chunk_low=chunk_low, chunk_high=chunk_high, levels=levels,
            disc_reach=_disc_reach(2 * int(local_bg_radius)))
        self._settings = _Settings(
            adc_threshold=float(adc_threshold), minimum_snr=float(minimum_snr),
            min_pixel_count=int(min_pixel_count), max_pixel_count=int(max_pixel_count),
            local_bg_radius=int(local_bg_radius), iterations=int(radial_stats_iterations),
            n_fs=n_fs, masked_class=num_bins, num_panels=int(rects.shape[0]))
        pixel_threshold = np.zeros(num_bins + 1, dtype=np.float32)
        pixel_threshold[num_bins] = np.nan  # masked pixels: never candidate nor background
        self._buffers = _Buffers(
            core_low=np.full(num_bins, np.inf, dtype=np.float32),  # no core before a frame
            core_high=np.full(num_bins, -np.inf, dtype=np.float32),
            negative_low=np.zeros(num_bins, dtype=np.float32),
            high_table=np.full(levels * num_bins + 1, np.inf, dtype=np.float32),
            negative_low_table=np.full(levels * num_bins + 1, np.inf, dtype=np.float32),
            tails=np.empty(size, dtype=np.int32), tail_class=np.empty(size, dtype=np.int32),
            tail_value=np.empty(size, dtype=np.float32),
            sorted_value=np.empty(size, dtype=np.float32),
            tail_start=np.zeros(num_bins + 1, dtype=np.int64),
            sums=np.zeros(num_bins + 1, dtype=np.complex128),
            radial_mean=np.zeros(num_bins, dtype=np.float64),
            radial_sigma=np.zeros(num_bins, dtype=np.float64),
            pixel_threshold=pixel_threshold,
            leaky=np.zeros(num_bins, dtype=np.bool_),
            marked=np.empty(size, dtype=np.int32), seeds=np.empty(size, dtype=np.int32),
            panel_count=np.zeros(rects.shape[0] + 1, dtype=np.int64),
            candidate=np.zeros(size, dtype=np.uint8),
            slot_fs=np.zeros(size + 1, dtype=np.int32),
            slot_ss=np.zeros(size + 1, dtype=np.int32),
            slot_dead=np.zeros(size + 1, dtype=np.int32),
            group=np.empty(size, dtype=np.int32),
            out=np.empty((7, 4096), dtype=np.float64))

    def set_thresholds(self, *, adc_threshold: float, minimum_snr: float, min_pixel_count: int,
                       max_pixel_count: int, max_num_peaks: int) -> None:
        """Changes the parameters that need no new tables (the parameter tweaker changes them
        on every key press; a new instance costs ~0.1 s for a 1M frame). The next frame's peaks
        are exactly those of a new instance with these parameters.

        Raises:
            OmConfigurationError: when a parameter is out of range (nothing is changed).
        """
        _check(_threshold_checks(adc_threshold, minimum_snr, min_pixel_count, max_pixel_count,
                                 max_num_peaks))
        self._settings = self._settings._replace(
            adc_threshold=float(adc_threshold), minimum_snr=float(minimum_snr),
            min_pixel_count=int(min_pixel_count), max_pixel_count=int(max_pixel_count))
        self.max_num_peaks = int(max_num_peaks)

    @property
    def radial_mean(self) -> np.ndarray:
        """float64 (num_bins,): the last frame's radial mean per radius bin."""
        return self._buffers.radial_mean.copy()

    @property
    def radial_sigma(self) -> np.ndarray:
        """float64 (num_bins,): the last frame's radial sigma per radius bin."""
        return self._buffers.radial_sigma.copy()

    @property
    def radial_threshold(self) -> np.ndarray:
        """float32 (num_bins,): the last frame's threshold per radius bin."""
        return self._buffers.pixel_threshold[:-1].copy()

    def find_peaks(self, data: np.ndarray) -> PeakList:
        """Finds the Bragg peaks of one frame.

        Args:
            data: calibrated frame, (ss, fs) of the radius map's shape, float (float32 avoids a
                conversion copy), NaN = invalid pixel.

        Returns:
            The :class:`PeakList` (float64 arrays), in the order they were found.

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
            num_peaks = _find_peaks_kernel(flat, self._tables, self._buffers, self._settings)
            if num_peaks >= 0:
                break
            self._buffers = self._buffers._replace(out=np.empty((7, -num_peaks),
                                                                dtype=np.float64))
        columns = self._buffers.out[:, :min(num_peaks, self.max_num_peaks)]
        # Fresh arrays (the work buffers are reused by the next frame).
        return tuple.__new__(PeakList, [column.copy() for column in columns])
