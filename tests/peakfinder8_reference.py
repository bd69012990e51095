# SPDX-License-Identifier: GPL-3.0-or-later
"""Reference peakfinder8: the rules of ``om.processing_layer.peakfinder8``, plainly.

Written for clarity, not speed (numpy, Python loops over groups), as the
oracle the fast numba implementation is tested against. It encodes the semantics of the
peakfinder8 that Cheetah, OM and CrystFEL share (read from OM's ``src/cython/peakfinder8.cpp``
and CrystFEL's ``libcrystfel/src/peakfinder8.c``; no code taken), step by step as numbered in
the docstring of ``om/processing_layer/peakfinder8.py``; nothing here is shared with the fast
code. ``tests/test_peakfinder8_agreement.py`` checks both against peak lists OM itself made.
"""

import numpy as np

from om.processing_layer.peakfinder8 import PeakList

FLT_MAX = np.float32(np.finfo(np.float32).max)
FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def radial_statistics(values, bins, num_bins, iterations, minimum_snr, adc_threshold):
    """Step 2: per radius bin, the mean, sigma and threshold of the clipped values.

    Args:
        values: float32 (n,) finite values of the valid pixels.
        bins: int (n,) their radius bins.

    Returns:
        float64 mean (num_bins,), float64 sigma (num_bins,), float32 threshold (num_bins,).
    """
    v = values.astype(np.float64)
    low = np.full(num_bins, -1e9, dtype=np.float32)
    high = np.full(num_bins, 1e9, dtype=np.float32)
    mean = np.zeros(num_bins)
    sigma = np.zeros(num_bins)
    for _ in range(iterations):
        kept = (values > low[bins]) & (values < high[bins])
        count = np.bincount(bins[kept], minlength=num_bins)
        total = np.bincount(bins[kept], weights=v[kept], minlength=num_bins)
        total_sq = np.bincount(bins[kept], weights=v[kept] * v[kept], minlength=num_bins)
        for k in range(num_bins):
            if count[k] == 0:
                mean[k], sigma[k] = 0.0, 0.0
                low[k], high[k] = FLT_MIN, FLT_MAX
                continue
            mean[k] = total[k] / count[k]
            variance = total_sq[k] / count[k] - mean[k] * mean[k]
            sigma[k] = np.sqrt(variance) if variance >= 0 else variance
            high[k] = max(np.float32(mean[k] + minimum_snr * sigma[k]), np.float32(adc_threshold))
            low[k] = np.float32(mean[k] - minimum_snr * sigma[k])
    return mean, sigma, high


def find_peaks_reference(data, *, radius_map, panels, adc_threshold, minimum_snr,
                         min_pixel_count, max_pixel_count, local_bg_radius, min_res, max_res,
                         max_num_peaks, bad_pixel_map=None, radial_stats_iterations=5,
                         return_labels=False):
    """peakfinder8, reference version: same arguments as ``Peakfinder8PeakDetection``.

    Returns:
        The PeakList; with ``return_labels``, also the list of each peak's pixels as
        ``(ss array, fs array)``.
    """
    data = np.asarray(data, dtype=np.float32)
    radius = np.asarray(radius_map, dtype=np.float32)
    n_ss, n_fs = data.shape
    in_panel = np.zeros(data.shape, dtype=bool)
    for min_fs, max_fs, min_ss, max_ss in panels:
        in_panel[min_ss:max_ss + 1, min_fs:max_fs + 1] = True
    has_radius = in_panel & np.isfinite(radius) & (radius >= 0)
    # Step 1: the mask and the radius bins (rint: halves to even, as C's rint).
    mask = has_radius & (radius >= min_res) & (radius <= max_res)
    if bad_pixel_map is not None:
        mask &= np.asarray(bad_pixel_map) != 0
    bins = np.zeros(data.shape, dtype=np.int64)
    bins[has_radius] = np.rint(radius[has_radius]).astype(np.int64)
    num_bins = int(bins.max()) + 1
    valid = mask & np.isfinite(data)
    # Step 2: radial statistics and thresholds.
    mean, _, threshold = radial_statistics(data[valid], bins[valid], num_bins,
                                           radial_stats_iterations, minimum_snr, adc_threshold)
    pixel_threshold = threshold[bins]
    candidate = valid & (data > pixel_threshold)  # step 3
    background_ok = valid & (data < pixel_threshold)  # step 5
    # Steps 4 to 7, panel by panel in the order of their first pixel.
    search = _GroupSearch(candidate)
    found = []
    for panel in sorted(panels, key=lambda rect: (rect[2], rect[0])):
        min_fs, max_fs, min_ss, max_ss = panel
        for seed_ss in range(min_ss + 1, max_ss):  # the panel's edge pixels never seed
            for seed_fs in range(min_fs + 1, max_fs):
                if not candidate[seed_ss, seed_fs] or search.taken[seed_ss, seed_fs]:
                    continue
                ss, fs = search.grow(seed_fs, seed_ss, panel)
                peak = _measure(data, radius, bins, mean, background_ok, ss, fs, panel,
                                minimum_snr, min_pixel_count, max_pixel_count, local_bg_radius)
                if peak is not None:
                    found.append(peak + ((ss, fs),))
    found = found[:max_num_peaks]
    columns = [np.array([peak[i] for peak in found], dtype=np.float64) for i in range(7)]
    peaks = PeakList(*columns)
    if return_labels:
        return peaks, [peak[7] for peak in found]
    return peaks


class _GroupSearch:
    """Step 4: grows a group from a seed as the reference implementation does.

    The group's pixels are kept in a list of panel-relative positions (``slot_fs``,
    ``slot_ss``) that lives for the whole frame and starts as zeros. The search visits, for
    each listed pixel ``p = 0, 1, ...`` up to and *including* ``p == n`` (the first unused
    entry), the pixel itself and its 8 neighbours (order: self, the row above left to right,
    left, right, the row below), inside the panel, and appends every candidate not taken yet;
    it repeats the whole walk while the group grows. Reading entry ``n`` reads what an earlier
    group (possibly of another panel) left there, or zeros: that can attach candidates far from
    the seed to the group, as OM's and Cheetah's peakfinder8 do (CrystFEL's too, within a
    panel). Appending at ``n`` while reading entry ``n`` replaces the entry being read, so the
    remaining neighbours are those of the appended pixel, also as they do.
    """

    OFFSETS = ((0, 0), (-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))

    def __init__(self, candidate):
        self.candidate = candidate
        self.taken = np.zeros(candidate.shape, dtype=bool)
        self.slot_fs = [0]
        self.slot_ss = [0]

    def _slot(self, slots, index):
        return slots[index] if index < len(slots) else 0

    def _store(self, slots, index, value):
        while len(slots) <= index:
            slots.append(0)
        slots[index] = value

    def grow(self, seed_fs, seed_ss, panel):
        """Returns the group's pixels (ss array, fs array), absolute slab positions."""
        min_fs, max_fs, min_ss, max_ss = panel
        width, height = max_fs - min_fs + 1, max_ss - min_ss + 1
        self._store(self.slot_fs, 0, seed_fs - min_fs)
        self._store(self.slot_ss, 0, seed_ss - min_ss)
        pixels = []
        while True:
            size_before = len(pixels)
            p = 0
            while p <= len(pixels):
                for d_fs, d_ss in self.OFFSETS:
                    local_fs = self._slot(self.slot_fs, p) + d_fs
                    local_ss = self._slot(self.slot_ss, p) + d_ss
                    if not (0 <= local_fs < width and 0 <= local_ss < height):
                        continue
                    fs, ss = local_fs + min_fs, local_ss + min_ss
                    if not self.candidate[ss, fs] or self.taken[ss, fs]:
                        continue
                    self._store(self.slot_fs, len(pixels), local_fs)
                    self._store(self.slot_ss, len(pixels), local_ss)
                    self.taken[ss, fs] = True
                    pixels.append((ss, fs))
                p += 1
            if len(pixels) == size_before:
                break
        ss, fs = np.array(pixels, dtype=np.int64).reshape(-1, 2).T
        return ss, fs


def _measure(data, radius, bins, radial_mean, background_ok, ss, fs, panel, minimum_snr,
             min_pixel_count, max_pixel_count, local_bg_radius):
    """Steps 4 to 7 for one group: None, or (fs, ss, intensity, n, max, snr, radius)."""
    min_fs, max_fs, min_ss, max_ss = panel
    n = ss.size
    if n < min_pixel_count or n > max_pixel_count:
        return None
    values = data[ss, fs].astype(np.float64)
    # Step 4: the first centroid, weighted by the values above their radial mean.
    weights = values - radial_mean[bins[ss, fs]]
    weight_sum = weights.sum()
    if abs(weight_sum) < 1e-10:
        return None
    centre_fs = int(np.clip(np.rint((weights * fs).sum() / abs(weight_sum)), min_fs, max_fs))
    centre_ss = int(np.clip(np.rint((weights * ss).sum() / abs(weight_sum)), min_ss, max_ss))
    # Step 5: local background in the disc of radius 2 * local_bg_radius (offsets -2R..2R-1).
    width = 2 * local_bg_radius
    background = []
    for d_ss in range(-width, width):
        for d_fs in range(-width, width):
            b_fs, b_ss = centre_fs + d_fs, centre_ss + d_ss
            if d_fs * d_fs + d_ss * d_ss > width * width:
                continue
            if not (min_fs <= b_fs <= max_fs and min_ss <= b_ss <= max_ss):
                continue
            if background_ok[b_ss, b_fs]:
                background.append(float(data[b_ss, b_fs]))
    if background:
        background = np.asarray(background)
        offset = background.mean()
        variance = (background * background).mean() - offset * offset
        local_sigma = np.sqrt(variance) if variance >= 0 else 0.01
        background_max = max(0.0, background.max())
    else:
        offset = radial_mean[bins[centre_ss, centre_fs]]
        local_sigma = 0.01
        background_max = 0.0
    # Step 6: integration and acceptance.
    raw_sum = values.sum()
    if abs(raw_sum) < 1e-10:
        return None
    intensity = (values - offset).sum()
    peak_fs = (values * fs).sum() / abs(raw_sum)
    peak_ss = (values * ss).sum() / abs(raw_sum)
    peak_max = max(0.0, (values - offset).max())
    snr = intensity / local_sigma if abs(local_sigma) > 1e-10 else 0.0
    if snr < minimum_snr or peak_max < background_max - offset:
        return None
    if not (min_fs <= peak_fs <= max_fs and min_ss <= peak_ss <= max_ss):
        return None
    peak_radius = (values * radius[ss, fs]).sum() / abs(raw_sum)
    return (peak_fs, peak_ss, intensity, float(n), peak_max, snr, peak_radius)
