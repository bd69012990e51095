# SPDX-License-Identifier: GPL-3.0-or-later
"""Watching the sample: saturation and the radial profile, per frame on the processing ranks
and aggregated on the collecting rank. The crystallography layer calls these with one line
each (``om/processing_layer/crystallography.py``); the keys they add to the results and the
broadcast messages are in ``docs/broadcast.md``.
"""

import math
from typing import Any, Callable

import numpy as np

from om.lib.exceptions import OmConfigurationError
from om.lib.geometry import DetectorGeometry
from om.lib.hit_rate import HitRateHistory
from om.lib.parameters import Parameter
from om.lib.problems import problems
from om.lib.profile_averages import ProfileAverages
from om.lib.resolution import resolution_ring_radius
from om.lib.value_history import ValueHistory
from om.processing_layer.peakfinder8 import PeakList
from om.processing_layer.radial_profile import RadialProfile
from om.processing_layer.saturation import SaturationCounter

#: The keys of the ``crystallography`` group read here.
SAMPLE_WATCH_PARAMETERS = (
    Parameter("saturation_limit", float, default=None, nullable=True,
              description="pixels at or above this value, frame units, are saturated (besides "
              "those the Data Source marks +inf: JUNGFRAU G1/G2 with ADC 0); null: only those"),
    Parameter("saturation_peak_radius", int, default=2, minimum=0,
              description="a peak's saturated pixels are counted within this many pixels "
              "(a box) of its position, px"),
    Parameter("saturated_pixels_for_alarm", int, default=0, minimum=0,
              description="a frame with more saturated pixels than this counts in the "
              "saturation rate"),
    Parameter("saturation_rate_alarm", float, default=5.0, minimum=0,
              description="the GUI colours the saturation rate red above this, percent"),
    Parameter("radial_profile_bin_size", float, default=2.0,
              description="radius bin of the radial profile, px"),
    Parameter("radial_profile_row_step", int, default=4, minimum=1,
              description="the radial profile reads every this-th row of the frame"),
    Parameter("radial_profile_max_value", float, default=None, nullable=True,
              description="pixels above this value, frame units, are left out of the radial "
              "profile (Bragg spots; e.g. 20 photons); null: none is"),
    Parameter("radial_ring_resolution", list, default=[3.7, 3.0], element_type=float,
              nullable=True,
              description="resolution range of the watched ring (solvent ring), Angstrom, "
              "used when beam energy and detector distance are known"),
    Parameter("radial_ring_radius", list, default=None, element_type=float, nullable=True,
              description="radius range of the watched ring, px, used when the resolution "
              "range cannot be (null: no ring history then)"),
)


def _pair(filename: str, key: str, value: list[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2 or not all(math.isfinite(v) and v > 0 for v in value):
        raise OmConfigurationError(
            f"{filename}: crystallography/{key}: two positive numbers expected, got {value}")
    return min(value), max(value)


class FrameWatch:
    """Per frame on a processing rank: saturated pixels, those of each peak, the radial
    profile and the mean intensity in the watched ring.

    Args:
        get: returns a ``crystallography`` key's value.
        filename: the configuration file (for error messages).
        geometry: the detector geometry.
        good_pixels: optional (ss, fs) map, nonzero for good pixels.

    Raises:
        OmConfigurationError: naming the file and key of a value out of range.
    """

    def __init__(self, *, get: Callable[[str], Any], filename: str, geometry: DetectorGeometry,
                 good_pixels: np.ndarray | None) -> None:
        try:
            self._saturation = SaturationCounter(
                panels=geometry.panel_rectangles, shape=geometry.slab_shape,
                limit=get("saturation_limit"), peak_radius=get("saturation_peak_radius"))
        except OmConfigurationError as error:
            raise OmConfigurationError(f"{filename}: crystallography/saturation_limit: {error}")
        good = geometry.bad_region_mask.astype(bool)
        if good_pixels is not None:
            good &= np.asarray(good_pixels) != 0
        try:
            self._profile = RadialProfile(
                radius_map=geometry.radius, bin_size=get("radial_profile_bin_size"),
                row_step=get("radial_profile_row_step"), good_pixels=good,
                max_value=get("radial_profile_max_value"))
        except OmConfigurationError as error:
            raise OmConfigurationError(
                f"{filename}: crystallography/radial_profile_bin_size: {error}")
        self._ring_resolution = _pair(filename, "radial_ring_resolution",
                                      get("radial_ring_resolution"))
        self._ring_radius = _pair(filename, "radial_ring_radius", get("radial_ring_radius"))
        self._pixel_size = geometry.pixel_size_m

    def ring_radii(self, beam_energy: float, detector_distance: float) -> tuple[float, float]:
        """(low, high) radii of the watched ring, pixels: from its resolution range when the
        energy (eV) and distance (mm) allow, else ``radial_ring_radius``; NaN when neither."""
        if self._ring_resolution is not None:
            radii = [resolution_ring_radius(d, beam_energy, detector_distance, self._pixel_size)
                     for d in self._ring_resolution]
            if None not in radii:
                return min(radii), max(radii)
        return self._ring_radius or (math.nan, math.nan)

    def measure(self, frame: np.ndarray, peaks: PeakList, beam_energy: float,
                detector_distance: float, saturated: int | None = None) -> dict[str, Any]:
        """The result keys of one frame: ``num_saturated_pixels`` (int),
        ``peak_saturated_pixels`` (int32 (n,)), ``radial_profile`` (float32 (num_bins,),
        frame units), ``ring_intensity`` (float, frame units; NaN without a ring) and
        ``ring_radius`` ([low, high] px). ``saturated``: the frame's saturated pixels when the
        Data Source counted them (JUNGFRAU: its calibration did), which spares a pass over the
        frame unless ``saturation_limit`` asks for more; None or negative: not counted."""
        if saturated is None or saturated < 0 or self._saturation.has_limit:
            saturated = self._saturation.count(frame)
        in_peaks = (self._saturation.count_in_peaks(frame, peaks.fs, peaks.ss) if saturated
                    else np.zeros(len(peaks), dtype=np.int32))
        profile = self._profile.compute(frame)
        low, high = self.ring_radii(beam_energy, detector_distance)
        return {
            "num_saturated_pixels": saturated,
            "peak_saturated_pixels": in_peaks,
            "radial_profile": profile,
            "ring_intensity": self._profile.ring_mean(low, high),
            "ring_radius": [low, high],
        }


class WatchAggregates:
    """On the collecting rank: the saturation rate and its history (beside the hit rate), the
    hit and non-hit mean profiles and the ring intensity history.

    Args:
        get: returns a ``crystallography`` key's value.
    """

    def __init__(self, *, get: Callable[[str], Any]) -> None:
        self._alarm_pixels = get("saturated_pixels_for_alarm")
        self._rate_alarm = get("saturation_rate_alarm")
        self._saturation_rate = HitRateHistory(
            window_size=get("running_average_window_size"),
            history_length=get("hit_rate_history_length"))
        self._ring = ValueHistory(length=get("hit_rate_history_length"))
        self._bin_size = get("radial_profile_bin_size")
        self._profiles: ProfileAverages | None = None  # sized by the first profile
        self._ring_radius = [math.nan, math.nan]
        self.num_saturated_frames = 0

    def reset(self) -> None:
        """Clears the histories and the averages."""
        self._saturation_rate.reset()
        self._ring.reset()
        if self._profiles is not None:
            self._profiles.reset()

    def add(self, result: dict[str, Any]) -> None:
        """Adds one frame's result (keys of :meth:`FrameWatch.measure`, ``timestamp`` and
        ``frame_is_hit``; a result without the keys of :meth:`FrameWatch.measure` counts as
        unsaturated and adds no profile).

        A profile of another size than the first one (a rank with another geometry: a bug)
        is counted as ``bad_rank_message`` and left out.
        """
        saturated = int(result.get("num_saturated_pixels", 0)) > self._alarm_pixels
        self.num_saturated_frames += int(saturated)
        timestamp = float(result["timestamp"])
        self._saturation_rate.add(timestamp, saturated)
        if "radial_profile" not in result:
            return
        profile = np.asarray(result["radial_profile"], dtype=np.float32)
        if self._profiles is None:
            self._profiles = ProfileAverages(num_bins=profile.size)
        try:
            self._profiles.add(profile, bool(result["frame_is_hit"]))
        except ValueError as error:
            problems.report("bad_rank_message", f"radial profile left out: {error}")
            return
        ring = float(result["ring_intensity"])
        if math.isfinite(ring):
            self._ring.add(timestamp, ring)
        self._ring_radius = [float(v) for v in result["ring_radius"]]

    def omdata_keys(self) -> dict[str, Any]:
        """The ``omdata`` keys (docs/broadcast.md)."""
        _, rates = self._saturation_rate.history()
        ring_times, ring_values = self._ring.history()
        profiles = self._profiles or ProfileAverages(num_bins=0)
        return {
            "saturation_rate_history": rates,
            "saturation_rate": self._saturation_rate.hit_rate,
            "saturation_rate_alarm": float(self._rate_alarm),
            "num_saturated_frames": self.num_saturated_frames,
            "radial_profile_radius": (np.arange(profiles.latest.size) + 0.5) * self._bin_size,
            "radial_profile_latest": profiles.latest.copy(),
            "radial_profile_hits": profiles.mean(hits=True),
            "radial_profile_non_hits": profiles.mean(hits=False),
            "radial_profile_num_hits": profiles.num_profiles[1],
            "radial_profile_num_non_hits": profiles.num_profiles[0],
            "ring_intensity_timestamp_history": ring_times,
            "ring_intensity_history": ring_values,
            "ring_radius": list(self._ring_radius),
        }
