# SPDX-License-Identifier: GPL-3.0-or-later
"""Reference peakfinder8: the algorithm of ``om.processing_layer.peakfinder8``, plainly.

Written for clarity, not speed (numpy and scipy.ndimage, Python loops over bins and peaks), as
the oracle the fast numba implementation is tested against. Every step follows the numbered
description in the docstring of ``om/processing_layer/peakfinder8.py`` (from Barty et al.,
J. Appl. Cryst. 47, 1118 (2014)); nothing here is shared with the fast code.
"""

import numpy as np
from scipy import ndimage

from om.processing_layer.peakfinder8 import PeakList

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def static_good_pixels(radius_map, panels, bad_pixel_map=None):
    """bool (ss, fs): pixels inside a panel, with a finite radius, good in the bad pixel map."""
    in_panel = np.zeros(radius_map.shape, dtype=bool)
    for min_fs, max_fs, min_ss, max_ss in panels:
        in_panel[min_ss:max_ss + 1, min_fs:max_fs + 1] = True
    good = in_panel & np.isfinite(radius_map) & (radius_map >= 0)
    if bad_pixel_map is not None:
        good &= np.asarray(bad_pixel_map) != 0
    return good


def radial_samples(radius_map, good, max_pixels_per_bin):
    """For each integer radius bin: the flat indices of its statistics sample."""
    bins = np.floor(np.where(good, radius_map, 0)).astype(np.int64)
    good_pixels = np.flatnonzero(good.ravel())  # raster order
    good_bins = bins.ravel()[good_pixels]
    by_bin = good_pixels[np.argsort(good_bins, kind="stable")]  # stable: raster order kept
    counts = np.bincount(good_bins)
    starts = np.concatenate([[0], np.cumsum(counts)])
    samples = []
    for k in range(counts.size):
        pixels = by_bin[starts[k]:starts[k + 1]]
        if max_pixels_per_bin is not None and pixels.size > max_pixels_per_bin:
            positions = np.floor((np.arange(max_pixels_per_bin) + 0.5) * pixels.size
                                 / max_pixels_per_bin).astype(np.int64)
            pixels = pixels[positions]
        samples.append(pixels)
    return bins, samples


def radial_statistics(data, samples, iterations, clip, minimum_snr, adc_threshold):
    """Per bin: sigma-clipped mean, sigma, and threshold (inf when the bin has no data)."""
    flat = data.ravel().astype(np.float64)
    num_bins = len(samples)
    mean = np.zeros(num_bins)
    sigma = np.zeros(num_bins)
    threshold = np.full(num_bins, np.inf)
    for k, pixels in enumerate(samples):
        values = flat[pixels]
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        used = values
        m, s = used.mean(), used.std()
        for _ in range(iterations - 1):
            kept = values[(values >= m - clip * s) & (values <= m + clip * s)]
            if kept.size == used.size or kept.size == 0:
                break
            used = kept
            m, s = used.mean(), used.std()
        mean[k], sigma[k] = m, s
        threshold[k] = max(adc_threshold, m + minimum_snr * s)
    return mean, sigma, threshold


def find_peaks_reference(data, *, radius_map, panels, adc_threshold, minimum_snr,
                         min_pixel_count, max_pixel_count, local_bg_radius, min_res, max_res,
                         max_num_peaks, bad_pixel_map=None, radial_stats_iterations=5,
                         radial_stats_sigma_clip=3.0, radial_stats_max_pixels_per_bin=256,
                         return_labels=False):
    """peakfinder8, reference version: same arguments as ``Peakfinder8PeakDetection``.

    Returns:
        The PeakList; with ``return_labels``, also the list of each peak's pixels as
        ``(ss array, fs array)``.
    """
    data = np.asarray(data, dtype=np.float32)
    radius_map = np.asarray(radius_map, dtype=np.float64)
    good = static_good_pixels(radius_map, panels, bad_pixel_map)
    bins, samples = radial_samples(radius_map, good, radial_stats_max_pixels_per_bin)
    radial_mean, radial_sigma, bin_threshold = radial_statistics(
        data, samples, radial_stats_iterations, radial_stats_sigma_clip, minimum_snr,
        adc_threshold)

    pixel_threshold = np.where(good, bin_threshold[bins], np.inf)
    with np.errstate(invalid="ignore"):
        above = data > pixel_threshold  # NaN: False
        eligible = good & (radius_map >= min_res) & (radius_map <= max_res)
    candidates = above & eligible
    # Background pixels: valid, not NaN, not above their own bin's threshold.
    background_ok = good & ~np.isnan(data) & ~above

    n_fs = data.shape[1]
    found = []  # (first flat index, fs, ss, intensity, n, max, snr, radius, pixels)
    for min_fs, max_fs, min_ss, max_ss in panels:
        sub = candidates[min_ss:max_ss + 1, min_fs:max_fs + 1]
        labels, _ = ndimage.label(sub, structure=EIGHT_CONNECTED)
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            ss, fs = np.nonzero(labels[box] == label)
            found.extend(_measure(data, radius_map, bins, background_ok, radial_mean,
                                  radial_sigma, ss + box[0].start + min_ss,
                                  fs + box[1].start + min_fs, n_fs,
                                  (min_fs, max_fs, min_ss, max_ss), adc_threshold, minimum_snr,
                                  min_pixel_count, max_pixel_count, local_bg_radius))
    if len(found) > max_num_peaks:
        strongest = sorted(range(len(found)), key=lambda i: (-found[i][3], found[i][0]))
        found = [found[i] for i in strongest[:max_num_peaks]]
    found.sort(key=lambda peak: peak[0])
    columns = [np.array([peak[i] for peak in found], dtype=np.float64) for i in range(1, 8)]
    peaks = PeakList(*columns)
    if return_labels:
        return peaks, [peak[8] for peak in found]
    return peaks


def _measure(data, radius_map, bins, background_ok, radial_mean, radial_sigma, ss, fs, n_fs,
             panel, adc_threshold, minimum_snr, min_pixel_count, max_pixel_count,
             local_bg_radius):
    """Steps 4 to 6 for one connected group of candidate pixels: [] or [peak tuple]."""
    n = ss.size
    if n < min_pixel_count or n > max_pixel_count:
        return []
    flat = ss * n_fs + fs
    order = np.argsort(flat)  # raster order: the first maximum wins ties
    ss, fs, flat = ss[order], fs[order], flat[order]
    values = data[ss, fs].astype(np.float64)
    brightest = int(np.argmax(values))
    b_ss, b_fs = ss[brightest], fs[brightest]
    min_fs, max_fs, min_ss, max_ss = panel
    box = (slice(max(b_ss - local_bg_radius, min_ss), min(b_ss + local_bg_radius, max_ss) + 1),
           slice(max(b_fs - local_bg_radius, min_fs), min(b_fs + local_bg_radius, max_fs) + 1))
    ring = data[box][background_ok[box]].astype(np.float64)
    if ring.size >= 2:
        bg, bg_sigma = ring.mean(), ring.std()
    else:
        bg, bg_sigma = radial_mean[bins[b_ss, b_fs]], radial_sigma[bins[b_ss, b_fs]]
    weights = values - bg
    intensity = weights.sum()
    if intensity <= 0:
        return []
    snr = intensity / (bg_sigma * np.sqrt(n)) if bg_sigma > 0 else np.inf
    if snr < minimum_snr or not values[brightest] - bg > adc_threshold:
        return []
    radii = radius_map[ss, fs]
    return [(int(flat[0]), float((weights * fs).sum() / intensity),
             float((weights * ss).sum() / intensity), float(intensity), float(n),
             float(values[brightest]), float(snr), float((weights * radii).sum() / intensity),
             (ss, fs))]
