# SPDX-License-Identifier: GPL-3.0-or-later
"""Serial crystallography: peakfinder8 and hit finding on the processing ranks; hit rate,
virtual powder pattern, peakogram and broadcast on the collecting rank.

A frame is a hit when ``min_num_peaks_for_hit < n_peaks < max_num_peaks_for_hit`` (OM's
rule). Parameter groups and keys are OM's (``crystallography``, ``peakfinder8_peak_detection``).
The broadcast messages (tags ``omdata`` and ``omframedata``) are documented in
``docs/broadcast.md``. With ``hit_saving`` on, the processing ranks also save the chosen frames
with their peaks for CrystFEL (:mod:`om.processing_layer.hit_saving`, ``docs/hit_saving.md``).
"""

import contextlib
import logging
import math
import time
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from om.lib.broadcast import DataBroadcaster
from om.lib.curve import CurveServer
from om.lib.crystfel_feed import CrystfelFrameFeed
from om.lib.cxi_writer import FrameRecord
from om.lib.exceptions import OmConfigurationError
from om.lib.event_rate import EventRateMeter
from om.lib.frame_demand import FrameDemand, FrameSendingGate
from om.lib.geometry import DetectorGeometry, assemble, load_bad_pixel_map, load_geometry
from om.lib.hit_rate import HitRateHistory
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.peakogram import Peakogram
from om.lib.monitor_health import health
from om.lib.problems import problems
from om.lib.responding_socket import RespondingSocket
from om.lib.stage_times import STAGES, describe_per_event, stage_times
from om.lib.virtual_powder import VirtualPowderPattern
from om.processing_layer.hit_saving import (
    HIT_SAVING_GROUP,
    HitSaver,
    HitSavingSettings,
    HitsList,
    file_attributes,
)
from om.processing_layer.peakfinder8 import Peakfinder8PeakDetection
from om.processing_layer.sample_watch import SAMPLE_WATCH_PARAMETERS, FrameWatch, WatchAggregates

logger = logging.getLogger("om")

_CRYSTALLOGRAPHY = "crystallography"
_PEAKFINDER8 = "peakfinder8_peak_detection"
_MIN_BROADCAST_PERIOD = 1.0  # s: at low event rates, broadcast at least once a second
_RESET_LOG_INTERVAL = 5.0  # s between two "plots reset" lines (a flood of requests logs one)
# s: at high event rates, at most 10 broadcasts a second (the GUIs redraw at 10 Hz); each one
# packs the virtual powder pattern and maybe a frame, 5-10 MB for a 1M, too much for 40 a second.
_MIN_BROADCAST_GAP = 0.1


def _nearest_index(position: np.ndarray, size: int) -> np.ndarray:
    """int64 (n,): the index of the pixel nearest to each float position (pixel i centred on
    i), clamped to 0..size - 1. (np.clip costs twice as much: the collecting rank maps every
    peak of every event.)"""
    index = np.floor(position + 0.5).astype(np.int64)
    np.maximum(index, 0, out=index)
    return np.minimum(index, size - 1, out=index)


def build_peakfinder8(geometry: DetectorGeometry, bad_pixel_map: np.ndarray | None,
                      get: Callable[[str], Any]) -> Peakfinder8PeakDetection:
    """peakfinder8 as the monitor runs it: the geometry's radius map and panels, the
    ``peakfinder8_peak_detection`` values ``get(key)`` returns (the parameter tweaker passes
    its own, so its peaks are the monitor's).

    Raises:
        OmConfigurationError: when a value is out of range.
    """
    return Peakfinder8PeakDetection(
        radius_map=geometry.peakfinder8_radius,
        panels=geometry.panel_rectangles,
        adc_threshold=get("adc_threshold"),
        minimum_snr=get("minimum_snr"),
        min_pixel_count=get("min_pixel_count"),
        max_pixel_count=get("max_pixel_count"),
        local_bg_radius=get("local_bg_radius"),
        min_res=get("min_res"),
        max_res=get("max_res"),
        max_num_peaks=get("max_num_peaks"),
        bad_pixel_map=bad_pixel_map,
    )


def hit_decision(num_peaks: int, min_num_peaks: int, max_num_peaks: int) -> bool:
    """OM's rule: a hit has more than ``min_num_peaks`` and fewer than ``max_num_peaks``."""
    return min_num_peaks < num_peaks < max_num_peaks


class CrystallographyProcessing:
    """The crystallography monitor (OM's ``CrystallographyProcessing``).

    Args:
        parameters: the monitor's configuration.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_CRYSTALLOGRAPHY, (
            Parameter("geometry_file", str, required=True,
                      description="CrystFEL geometry file of the detector"),
            Parameter("min_num_peaks_for_hit", int, default=10,
                      description="a hit has more peaks than this"),
            Parameter("max_num_peaks_for_hit", int, default=5000,
                      description="a hit has fewer peaks than this"),
            Parameter("running_average_window_size", int, default=200,
                      description="events in the running-average hit rate"),
            Parameter("hit_rate_history_length", int, default=10000,
                      description="points of hit rate history broadcast"),
            Parameter("data_broadcast_url", str, required=True,
                      description="ZeroMQ URL the PUB socket binds to"),
            Parameter("data_broadcast_interval", int, default=10,
                      description="events between two broadcasts (and at least one a second)"),
            Parameter("responding_url", str, default=None, nullable=True,
                      description="ZeroMQ URL of the responding (ROUTER) socket, or null"),
            Parameter("curve_secret_key_file", str, default=None, nullable=True,
                      description="CurveZMQ: the monitor's .key_secret file (mode 600), or null "
                                  "for plain sockets (docs/security.md)"),
            Parameter("curve_authorized_keys_directory", str, default=None, nullable=True,
                      description="CurveZMQ: folder of the clients' public .key files that may "
                                  "connect to the broadcast and responding sockets"),
            Parameter("hit_frame_sending_interval", int, default=1,
                      description="send every Nth hit frame of each rank (0: none), while "
                      "subscribers want frames"),
            Parameter("non_hit_frame_sending_interval", int, default=0,
                      description="send every Nth non-hit frame of each rank (0: none), "
                      "while subscribers want frames"),
            Parameter("speed_report_interval", int, default=100,
                      description="events between two speed reports on the console"),
            Parameter("peakogram_radius_bin_size", float, default=2.0,
                      description="peakogram radius bin, pixels"),
            Parameter("peakogram_intensity_bin_size", float, default=10.0,
                      description="peakogram intensity bin, frame units (photons)"),
            Parameter("crystfel_frames", str, default="hits", choices=("hits", "all", "none"),
                      description="frames fed to indexamajig (of those the processing ranks send)"),
            Parameter("crystfel_frame_interval", int, default=1,
                      description="feed every Nth chosen frame to indexamajig"),
            Parameter("crystfel_max_frames_per_second", float, default=20.0,
                      description="most frames per second published for indexamajig's SUB mode"),
            Parameter("crystfel_queue_length", int, default=16,
                      description="frames kept for indexamajig's REQ mode (oldest dropped)"),
            *SAMPLE_WATCH_PARAMETERS,
        )),
        ParameterGroup(_PEAKFINDER8, (
            Parameter("adc_threshold", float, required=True,
                      description="minimum pixel value above the background, frame units"),
            Parameter("minimum_snr", float, required=True, description="minimum peak SNR"),
            Parameter("min_pixel_count", int, required=True, description="minimum peak size, px"),
            Parameter("max_pixel_count", int, required=True, description="maximum peak size, px"),
            Parameter("local_bg_radius", int, required=True,
                      description="radius of the local background ring, px"),
            Parameter("min_res", float, required=True,
                      description="smallest radius searched, px from the beam"),
            Parameter("max_res", float, required=True,
                      description="largest radius searched, px from the beam"),
            Parameter("max_num_peaks", int, required=True, description="peaks kept per frame"),
            Parameter("bad_pixel_map_filename", str, default=None, nullable=True,
                      description="HDF5 file of the bad pixel map (1 good, 0 bad), or null"),
            Parameter("bad_pixel_map_hdf5_path", str, default=None, nullable=True,
                      description="dataset of the bad pixel map in that file"),
        )),
        HIT_SAVING_GROUP,
    )

    def __init__(self, *, parameters: MonitorParameters) -> None:
        self._parameters = parameters
        self._geometry: DetectorGeometry | None = None
        self._curve: CurveServer | None = None

    def _get(self, key: str, group: str = _CRYSTALLOGRAPHY) -> Any:
        return self._parameters.get(group, key)

    @contextlib.contextmanager
    def _naming_key(self, key: str, group: str = _CRYSTALLOGRAPHY) -> Iterator[None]:
        # Start-up errors name the configuration file and key that led to them.
        try:
            yield
        except OmConfigurationError as error:
            raise OmConfigurationError(f"{self._parameters.filename}: {group}/{key}: {error}")

    def _load_geometry(self) -> DetectorGeometry:
        with self._naming_key("geometry_file"):
            return load_geometry(self._parameters.resolve_path(self._get("geometry_file")))

    def peakfinder8_inputs(self) -> tuple[DetectorGeometry, np.ndarray | None]:
        """The geometry and the bad pixel map (uint8-like (ss, fs), 1 good, or None) the
        processing ranks give peakfinder8 (the parameter tweaker uses them too).

        Raises:
            OmConfigurationError: naming the file and key when one cannot be read.
        """
        self._geometry = self._load_geometry()
        return self._geometry, self._load_bad_pixel_map()

    def _load_bad_pixel_map(self) -> np.ndarray | None:
        filename = self._get("bad_pixel_map_filename", _PEAKFINDER8)
        if filename is None:
            return None
        with self._naming_key("bad_pixel_map_filename", _PEAKFINDER8):
            return load_bad_pixel_map(
                self._parameters.resolve_path(filename),
                self._get("bad_pixel_map_hdf5_path", _PEAKFINDER8) or "/data/data",
                self._geometry.slab_shape,
            )

    # Processing ranks ---------------------------------------------------------------------

    def initialize_processing_node(self, *, node_rank: int, node_pool_size: int) -> None:
        """Loads the geometry and bad pixel map and prepares peakfinder8.

        Raises:
            OmConfigurationError: when the geometry or bad pixel map cannot be read.
        """
        _, bad_pixel_map = self.peakfinder8_inputs()
        self._peakfinder = build_peakfinder8(self._geometry, bad_pixel_map,
                                             lambda key: self._get(key, _PEAKFINDER8))
        self._watch = FrameWatch(get=self._get, filename=self._parameters.filename,
                                 geometry=self._geometry, good_pixels=bad_pixel_map)
        self._peakfinder.find_peaks(self._warm_up_frame())
        self._min_peaks = self._get("min_num_peaks_for_hit")
        self._max_peaks = self._get("max_num_peaks_for_hit")
        self._hit_interval = self._get("hit_frame_sending_interval")
        self._non_hit_interval = self._get("non_hit_frame_sending_interval")
        self._hits_seen = 0
        self._non_hits_seen = 0
        self._frame_gate = FrameSendingGate(processing_ranks=node_pool_size - 1)
        saving = HitSavingSettings.from_parameters(self._parameters)
        self._saver = None if saving.frames == "none" else HitSaver(
            saving, rank=node_rank, frame_shape=self._geometry.slab_shape,
            max_num_peaks=self._get("max_num_peaks", _PEAKFINDER8),
            attributes=file_attributes(self._parameters, node_rank))

    def _curve_options(self) -> dict[int, Any]:
        """CurveZMQ server options of the bound sockets ({} when not configured).

        Raises:
            OmConfigurationError: when only one of the two keys is set, or a file or folder
                cannot be used (naming the key and the file).
        """
        secret = self._get("curve_secret_key_file")
        folder = self._get("curve_authorized_keys_directory")
        if secret is None and folder is None:
            return {}
        key = "curve_authorized_keys_directory" if secret is not None else "curve_secret_key_file"
        with self._naming_key(key):
            if secret is None or folder is None:
                raise OmConfigurationError("both curve_secret_key_file and "
                                           "curve_authorized_keys_directory are needed")
        with self._naming_key("curve_secret_key_file"):
            self._curve = CurveServer(
                secret_key_file=self._parameters.resolve_path(secret),
                authorized_keys_directory=self._parameters.resolve_path(folder))
        return self._curve.options()

    def _warm_up_frame(self) -> np.ndarray:
        """A noisy frame with one bright spot inside the searched radii: peakfinder8 runs every
        code path on it, so numba compiles now (or loads its cache), not on the first frame."""
        geometry = self._geometry
        frame = np.random.default_rng(0).normal(1.0, 0.1, geometry.slab_shape).astype(np.float32)
        middle = 0.5 * (self._get("min_res", _PEAKFINDER8) + self._get("max_res", _PEAKFINDER8))
        distance = np.abs(np.nan_to_num(geometry.radius, nan=np.inf) - middle)
        ss, fs = np.unravel_index(np.argmin(distance), geometry.slab_shape)
        frame[max(ss - 1, 0):ss + 2, max(fs - 1, 0):fs + 2] = 1000.0
        return frame

    def _frame_is_due(self, is_hit: bool) -> bool:
        # OM's rule: each processing rank sends every Nth hit (or non-hit) frame; of those,
        # only as many as the collecting rank's consumers want (om/lib/frame_demand.py).
        if is_hit:
            self._hits_seen += 1
            due = self._hit_interval > 0 and self._hits_seen % self._hit_interval == 0
        else:
            self._non_hits_seen += 1
            due = (self._non_hit_interval > 0
                   and self._non_hits_seen % self._non_hit_interval == 0)
        return due and self._frame_gate.allows()

    def process_data(self, *, node_rank: int, node_pool_size: int,
                     data: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Finds the peaks of one frame and decides whether it is a hit.

        Args:
            data: the event's ``detector_data`` (float32 (ss, fs) calibrated frame),
                ``timestamp`` (s), ``event_id`` (str), ``beam_energy`` (eV) and
                ``detector_distance`` (mm); optionally ``detector_saturated_pixels`` (int,
                the frame's saturated pixels when the Data Source counted them),
                ``detector_spots`` (``fs``, ``ss``,
                ``intensity`` arrays: spots found by the detector's software, passed through)
                and the collecting rank's feedback ``frames_wanted_per_second``.

        Returns:
            The result map (peaks as float64 arrays ``peak_fs``, ``peak_ss``,
            ``peak_intensity``, ``peak_max_pixel_intensity``, ``peak_radius``; the frame as
            ``detector_data`` when due for sending; ``hit_saving``, the saving status, when
            frames are saved) and this rank.
        """
        frame = data["detector_data"]
        self._frame_gate.update(data)
        peaks = self._peakfinder.find_peaks(frame)
        num_peaks = len(peaks.fs)
        is_hit = hit_decision(num_peaks, self._min_peaks, self._max_peaks)
        result: dict[str, Any] = {
            "timestamp": float(data["timestamp"]),
            "event_id": data["event_id"],
            "beam_energy": float(data["beam_energy"]),
            "detector_distance": float(data["detector_distance"]),
            "frame_is_hit": is_hit,
            "num_peaks": num_peaks,
            "peak_fs": peaks.fs,
            "peak_ss": peaks.ss,
            "peak_intensity": peaks.intensity,
            "peak_max_pixel_intensity": peaks.max_pixel_intensity,
            "peak_radius": peaks.radius,
        }
        spots = data.get("detector_spots")
        if spots is not None:  # found by the detector's own software (e.g. Jungfraujoch)
            result["detector_spots"] = {
                key: np.asarray(spots[key], dtype=np.float64) for key in ("fs", "ss", "intensity")
            }
        result.update(self._watch.measure(frame, peaks, result["beam_energy"],
                                          result["detector_distance"],
                                          data.get("detector_saturated_pixels")))
        if self._frame_is_due(is_hit):
            result["detector_data"] = np.asarray(frame, dtype=np.float32)
        if self._saver is not None:
            if self._saver.wants(is_hit):
                self._saver.save(frame, peaks, FrameRecord(
                    event_id=str(data["event_id"]), timestamp=result["timestamp"],
                    frame_is_hit=is_hit, photon_energy_ev=result["beam_energy"],
                    detector_distance_mm=result["detector_distance"]))
            result["hit_saving"] = self._saver.status()
        return result, node_rank

    def end_processing_on_processing_node(self, *, node_rank: int,
                                          node_pool_size: int) -> dict[str, Any] | None:
        """Completes the open file of saved frames and returns the last saving status (or
        None when nothing is saved): a result that is no event."""
        if self._saver is None:
            return None
        return {"hit_saving": self._saver.close()}

    # Collecting rank ----------------------------------------------------------------------

    def initialize_collecting_node(self, *, node_rank: int, node_pool_size: int) -> None:
        """Loads the geometry, allocates the aggregates and binds the sockets.

        Raises:
            OmConfigurationError: when the geometry cannot be read or a socket cannot bind.
        """
        self._geometry = self._load_geometry()
        geometry = self._geometry
        self._hit_rate = HitRateHistory(
            window_size=self._get("running_average_window_size"),
            history_length=self._get("hit_rate_history_length"),
        )
        self._powder = VirtualPowderPattern(geometry.assembled_shape)
        self._peakogram = Peakogram(
            radius_bin_size=self._get("peakogram_radius_bin_size"),
            intensity_bin_size=self._get("peakogram_intensity_bin_size"),
            max_radius=float(np.nanmax(geometry.radius)),
        )
        self._watch = WatchAggregates(get=self._get)
        self._rate = EventRateMeter()
        self._num_hits = 0
        self._events_per_rank: dict[str, int] = {}
        self._frames_received = 0
        self._frame_demand = FrameDemand(collecting_rank=node_rank)
        self._start = time.time()
        self._latest: dict[str, Any] = {}
        self._latest_frame: dict[str, Any] | None = None
        self._last_broadcast_events = 0
        self._last_broadcast_problems: dict[str, int] = {}
        self._last_broadcast_time = time.monotonic()
        self._last_report_events = 0
        self._last_report_time = time.monotonic()
        self._last_report_stage_times = stage_times.totals()
        self._broadcast_interval = self._get("data_broadcast_interval")
        self._report_interval = self._get("speed_report_interval")
        curve = self._curve_options()
        with self._naming_key("data_broadcast_url"):
            self._broadcaster = DataBroadcaster(url=self._get("data_broadcast_url"),
                                                options=curve)
        responding_url = self._get("responding_url")
        self._responder = None
        self._last_reset_logged, self._resets_unlogged = -math.inf, 0
        if responding_url is not None:
            with self._naming_key("responding_url"):
                self._responder = RespondingSocket(
                    url=responding_url, handlers={b"resetplots": self._reset_plots},
                    options=curve,
                )
        crystfel_frames = self._get("crystfel_frames")
        if crystfel_frames == "all" and self._get("non_hit_frame_sending_interval") < 1:
            raise OmConfigurationError(
                f"{self._parameters.filename}: {_CRYSTALLOGRAPHY}/crystfel_frames: 'all' needs "
                f"{_CRYSTALLOGRAPHY}/non_hit_frame_sending_interval >= 1 (non-hits are not sent)"
            )
        self._crystfel = CrystfelFrameFeed(
            broadcaster=self._broadcaster, responding_socket=self._responder,
            frames=crystfel_frames, interval=self._get("crystfel_frame_interval"),
            max_rate=self._get("crystfel_max_frames_per_second"),
            queue_length=self._get("crystfel_queue_length"),
        )
        saving = HitSavingSettings.from_parameters(self._parameters)
        self._hits_list = None
        if saving.frames != "none":
            try:
                self._hits_list = HitsList(saving, self._parameters.resolve_path(
                    self._get("geometry_file")))
            except OSError as error:
                raise OmConfigurationError(f"{self._parameters.filename}: hit_saving/"
                                           f"output_directory: {error}")
            logger.info("saving %s frames to %s (listed in %s)", saving.frames,
                        saving.output_directory, self._hits_list.path)
        logger.info("broadcasting on %s%s", self._broadcaster.url,
                    f", answering requests on {self._responder.url}" if self._responder else "")

    def _reset_plots(self, identity: bytes) -> bytes:
        self._hit_rate.reset()
        self._powder.reset()
        self._peakogram.reset()
        self._watch.reset()
        self._resets_unlogged += 1
        now = time.monotonic()
        if now - self._last_reset_logged >= _RESET_LOG_INTERVAL:  # one line per flood
            logger.info("plots reset on request (%d times since the last line)",
                        self._resets_unlogged)
            self._last_reset_logged, self._resets_unlogged = now, 0
        return (b"ok: hit rate history, virtual powder plot, peakogram, saturation rate, "
                b"radial profiles and ring history reset")

    def collect_data(self, *, node_rank: int, node_pool_size: int,
                     processed_data: tuple[dict[str, Any], int]
                     ) -> dict[int, dict[str, float]] | None:
        """Adds one frame's result to the aggregates and broadcasts when due.

        Returns:
            Feedback for every processing rank when the frames per second its subscribers
            want has changed (``frames_wanted_per_second``, om/lib/frame_demand.py), else None.
        """
        result, rank = processed_data
        if self._hits_list is not None and "hit_saving" in result:
            self._hits_list.update(rank, result["hit_saving"])
        if "frame_is_hit" not in result:  # a rank's last status (end_processing_...), no event
            return None
        self._events_per_rank[str(rank)] = self._events_per_rank.get(str(rank), 0) + 1
        if self._rate.count == 0:  # speed reports measure from the first event, not start-up
            self._last_report_time = time.monotonic()
        self._rate.add()
        is_hit = bool(result["frame_is_hit"])
        self._num_hits += int(is_hit)
        self._hit_rate.add(result["timestamp"], is_hit)
        self._watch.add(result)
        fs = np.asarray(result["peak_fs"], dtype=np.float64)
        ss = np.asarray(result["peak_ss"], dtype=np.float64)
        if fs.size:
            pixels, inside = self._peak_pixels_in_assembled(fs, ss)
            self._powder.add(pixels, np.asarray(result["peak_intensity"])[inside])
            self._peakogram.add(np.asarray(result["peak_radius"]),
                                np.asarray(result["peak_max_pixel_intensity"]))
        self._latest = result
        if "detector_data" in result:
            self._frames_received += 1
            self._latest_frame = result
            self._crystfel.offer(result)
        self._broadcast_if_due()
        self._report_speed_if_due()
        return self._frame_demand.feedback(self._frames_wanted_per_second)

    def _frames_wanted_per_second(self) -> float:
        """Frames per second the subscribers want from all processing ranks together: twice
        what the frame broadcasts show (so that a frame is there for each one), plus the
        CrystFEL feed's; ``inf`` while indexamajig asks in REQ mode."""
        rate = 2.0 / _MIN_BROADCAST_GAP if self._broadcaster.wants("omframedata") else 0.0
        return rate + self._crystfel.frames_wanted_per_second()

    def _peak_pixels_in_assembled(self, fs: np.ndarray,
                                  ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns the indices (int64) of the peaks' pixels in the flattened assembled image
        and the boolean selection of the peaks that land on a panel."""
        slab_shape = self._geometry.slab_shape
        # Positions are pixel indices (pixel i centred on i): round to the nearest pixel. One
        # lookup per peak in a table the size of the frame: the collecting rank's caches are
        # cold, each lookup is a cache miss.
        pixels = self._geometry.assembled_flat_index[_nearest_index(ss, slab_shape[0]),
                                                     _nearest_index(fs, slab_shape[1])]
        inside = pixels >= 0
        return pixels[inside], inside

    def _rows_and_columns(self, fs: np.ndarray,
                          ss: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols) float64 of the peaks' pixels in the assembled image, and the selection
        of the peaks that land on a panel."""
        pixels, inside = self._peak_pixels_in_assembled(fs, ss)
        rows, cols = np.divmod(pixels, self._geometry.assembled_shape[1])
        return rows.astype(np.float64), cols.astype(np.float64), inside

    def _common_keys(self, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "timestamp": result.get("timestamp", 0.0),
            "beam_energy": result.get("beam_energy", 0.0),
            "detector_distance": result.get("detector_distance", 0.0),
            "pixel_size": self._geometry.pixel_size_m,
            "beam_center": [float(v) for v in self._geometry.beam_center_in_assembled],
        }

    def _broadcast_if_due(self) -> None:
        events = self._rate.count
        now = time.monotonic()
        since = now - self._last_broadcast_time
        if since < _MIN_BROADCAST_PERIOD and (
            events - self._last_broadcast_events < self._broadcast_interval
            or since < _MIN_BROADCAST_GAP
        ):
            return
        self._last_broadcast_events, self._last_broadcast_time = events, now
        self._last_broadcast_problems = problems.counts()
        if self._broadcaster.wants("omdata"):
            self._broadcast_data()
        if self._latest_frame is not None and self._broadcaster.wants("omframedata"):
            self._broadcast_frame(self._latest_frame)
        self._latest_frame = None

    def _broadcast_data(self) -> None:
        events = self._rate.count
        timestamps, rates = self._hit_rate.history()
        self._broadcaster.send("omdata", {
            **self._common_keys(self._latest),
            "hit_rate_timestamp_history": timestamps,
            "hit_rate_history": rates,
            "hit_rate": self._hit_rate.hit_rate,
            "virtual_powder_plot": self._powder.image,
            "peakogram": self._peakogram.histogram,
            "peakogram_radius_bin_size": self._peakogram.radius_bin_size,
            "peakogram_intensity_bin_size": self._peakogram.intensity_bin_size,
            "num_events": events,
            "num_hits": self._num_hits,
            "num_events_per_rank": dict(self._events_per_rank),
            "num_frames_received": self._frames_received,
            "events_per_second": self._rate.rate(),
            "problems": problems.counts(),
            **health.as_data(),
            "responding_url": self._responder.url if self._responder else None,
            "start_timestamp": self._start,
            "hit_saving": self._hits_list.status() if self._hits_list is not None else None,
            **self._watch.omdata_keys(),
        })

    def _broadcast_frame(self, result: dict[str, Any]) -> None:
        fs = np.asarray(result["peak_fs"], dtype=np.float64)
        ss = np.asarray(result["peak_ss"], dtype=np.float64)
        rows, cols, inside = self._rows_and_columns(fs, ss)
        self._broadcaster.send("omframedata", {
            **self._common_keys(result),
            "frame_data": assemble(result["detector_data"], self._geometry),
            "peak_list_x_in_frame": cols,
            "peak_list_y_in_frame": rows,
            "peak_list_intensity": np.asarray(result["peak_intensity"], dtype=np.float64)[inside],
            "event_id": result["event_id"],
            "frame_is_hit": bool(result["frame_is_hit"]),
            "num_peaks": int(rows.size),
            "peak_list_saturated_pixels": np.asarray(
                result.get("peak_saturated_pixels", np.zeros(fs.size)), dtype=np.int32)[inside],
            "num_saturated_pixels": int(result.get("num_saturated_pixels", 0)),
            **self._detector_spots_in_frame(result.get("detector_spots")),
        })

    def _detector_spots_in_frame(self, spots: dict[str, Any] | None) -> dict[str, Any]:
        if spots is None:
            return {}
        rows, cols, inside = self._rows_and_columns(np.asarray(spots["fs"]),
                                                    np.asarray(spots["ss"]))
        return {"detector_spots_x_in_frame": cols,
                "detector_spots_y_in_frame": rows,
                "detector_spots_intensity": np.asarray(spots["intensity"])[inside]}

    def _report_speed_if_due(self) -> None:
        events = self._rate.count
        if events - self._last_report_events < self._report_interval:
            return
        now = time.monotonic()
        rate = (events - self._last_report_events) / max(now - self._last_report_time, 1e-9)
        self._last_report_events, self._last_report_time = events, now
        print(f"om: {events} events, {self._num_hits} hits, hit rate "
              f"{self._hit_rate.hit_rate:.1f} %, {rate:.1f} events/s", flush=True)
        times = stage_times.totals()
        per_event = describe_per_event(self._last_report_stage_times, times)
        self._last_report_stage_times = times
        if per_event:
            print(f"om: time per event on the processing ranks: {per_event}", flush=True)

    def wait_for_data(self, *, node_rank: int, node_pool_size: int) -> None:
        """Serves requests for up to 5 ms (so the idle collecting rank sleeps)."""
        if self._responder is not None:
            self._responder.serve(5)
        else:
            time.sleep(0.005)
        # Problems found between events (e.g. a frame that stays incomplete) go out within a
        # second, as new events do.
        if (self._rate.count > self._last_broadcast_events
                or problems.counts() != self._last_broadcast_problems):
            self._broadcast_if_due()

    def end_processing_on_collecting_node(self, *, node_rank: int, node_pool_size: int) -> None:
        """Sends a last broadcast and prints the final summary."""
        if self._rate.count > self._last_broadcast_events:
            self._last_broadcast_time = 0.0
            self._broadcast_if_due()
        counts = problems.counts()
        events = self._rate.count
        elapsed = time.time() - self._start
        dropped = counts.get("frame_dropped_ranks_busy", 0)
        incomplete = counts.get("incomplete_frame", 0)
        print(f"om: final summary: {events} events, {self._num_hits} hits "
              f"({100.0 * self._num_hits / max(events, 1):.1f} %), {dropped} dropped frames, "
              f"{incomplete} incomplete frames, in {elapsed:.1f} s", flush=True)
        others = {kind: n for kind, n in sorted(counts.items())
                  if kind not in ("frame_dropped_ranks_busy", "incomplete_frame")}
        if others:
            print("om: problems: " + ", ".join(f"{k}={n}" for k, n in others.items()), flush=True)
        if self._hits_list is not None:
            print(f"om: {self._hits_list.summary()}", flush=True)
        per_event = describe_per_event((0, dict.fromkeys(STAGES, 0.0)), stage_times.totals())
        if per_event:
            print(f"om: time per event on the processing ranks, whole run: {per_event}",
                  flush=True)
        self._broadcaster.close()
        if self._responder is not None:
            self._responder.close()
        if self._curve is not None:
            self._curve.stop()
