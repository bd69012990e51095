# SPDX-License-Identifier: GPL-3.0-or-later
"""The crystallography GUI: hit rate, virtual powder pattern, peakogram and counters.

Start it with ``om_crystallography_gui.py tcp://monitor-host:12321``. It shows the newest
``omdata`` message the monitor broadcast, at most ``--refresh-rate`` times a second:

- the hit rate history (the running average over the monitor's window, against the time
  before the newest event, in s) with a dashed line at the latest hit rate, and the saturation
  rate (frames with more saturated pixels than the monitor's ``saturated_pixels_for_alarm``),
  red while above the monitor's ``saturation_rate_alarm``;
- the virtual powder pattern with resolution rings labelled in Å and its contrast control;
- the peakogram (peak intensity against distance from the beam, counts in log colour scale);
- the counters (events, hits, hit rate, events/s), the monitor's problem counts, and, in the
  status bar, the age of the newest data ("no data for N s" when the monitor is silent);
- a "Reset plots" button that asks the monitor, on its responding socket, to reset the hit
  rate history, the virtual powder pattern and the peakogram.
"""

import argparse
import datetime
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
import scipy.ndimage
from PyQt5 import QtCore, QtWidgets

from om.graphical_interfaces.common import (
    CURRENT_HIT_RATE_COLOR,
    DEFAULT_REFRESH_RATE,
    DEFAULT_STALE_AFTER,
    HIT_RATE_COLOR,
    PIXEL_CENTRE_OFFSET,
    SATURATION_ALARM_COLOR,
    SATURATION_RATE_COLOR,
    LevelsControl,
    MonitorWindow,
    ResolutionRings,
    add_common_arguments,
    parse_resolution_list,
    positive_float_type,
    resolution_at_radius,
    robust_levels,
    run_gui,
)
from om.graphical_interfaces.subscriber import (
    OMDATA_TAG,
    VALIDATORS,
    ReceivedMessage,
    RequestClient,
    RequestResult,
    Subscriber,
    resolve_responding_url,
)

DEFAULT_RESOLUTION_RINGS = (2.0, 3.0, 4.0, 6.0)
"""Resolution rings drawn by default, in Angstrom."""

RESET_REQUEST = b"resetplots"


class CrystallographyGui(MonitorWindow):
    """The main window of the crystallography GUI.

    Args:
        url: the monitor's data broadcast URL.
        responding_url: where to send "Reset plots" requests; by default the
            ``responding_url`` the monitor announces in its messages.
        refresh_rate: display updates per second (at most).
        resolution_rings: the rings drawn on the virtual powder pattern, in Angstrom.
        stale_after: seconds without data after which the status bar says "no data for N s".
        request_timeout: seconds to wait for the monitor's reply to a request.
        subscriber: a subscriber to use instead of a new one.
    """

    def __init__(
        self,
        url: str,
        *,
        responding_url: str | None = None,
        refresh_rate: float = DEFAULT_REFRESH_RATE,
        resolution_rings: Sequence[float] = DEFAULT_RESOLUTION_RINGS,
        stale_after: float = DEFAULT_STALE_AFTER,
        request_timeout: float = 2.0,
        subscriber: Subscriber | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(
            url,
            OMDATA_TAG,
            refresh_rate=refresh_rate,
            stale_after=stale_after,
            subscriber=subscriber or Subscriber(url, {OMDATA_TAG: VALIDATORS[OMDATA_TAG]}),
            parent=parent,
        )
        self.setWindowTitle(f"om crystallography — {url}")
        self.responding_url_override = responding_url
        self.announced_responding_url: str | None = None
        self._geometry: tuple | None = None
        self._requests = RequestClient(timeout=request_timeout)
        self.last_request_result: RequestResult | None = None
        """The outcome of the latest request to the monitor."""
        self._request_timer = QtCore.QTimer(self)
        self._request_timer.setInterval(50)
        self._request_timer.timeout.connect(self._poll_request)

        # -- counters and controls --------------------------------------------------------------
        self.counter_labels: dict[str, QtWidgets.QLabel] = {}
        counters = QtWidgets.QHBoxLayout()
        for key, title in (
            ("events", "Events"),
            ("hits", "Hits"),
            ("hit_rate", "Hit rate"),
            ("saturation_rate", "Saturated"),
            ("events_per_second", "Events/s"),
            ("newest_event", "Newest event"),
        ):
            label = QtWidgets.QLabel("—")
            label.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
            font = label.font()
            font.setPointSizeF(font.pointSizeF() * 1.3)
            font.setBold(True)
            label.setFont(font)
            box = QtWidgets.QVBoxLayout()
            box.addWidget(QtWidgets.QLabel(title))
            box.addWidget(label)
            counters.addLayout(box)
            counters.addSpacing(12)
            self.counter_labels[key] = label
        self.problems_label = QtWidgets.QLabel("monitor problems: —")
        self.problems_label.setWordWrap(True)
        self.saving_label = QtWidgets.QLabel("")  # hit saving (docs/hit_saving.md), when on
        self.saving_label.setWordWrap(True)
        status = QtWidgets.QVBoxLayout()
        status.addWidget(self.problems_label)
        status.addWidget(self.saving_label)
        counters.addLayout(status, stretch=1)

        self.rings_checkbox = QtWidgets.QCheckBox("Resolution rings")
        self.rings_checkbox.setChecked(True)
        self.auto_levels_checkbox = QtWidgets.QCheckBox("Auto levels")
        self.auto_levels_checkbox.setChecked(True)
        self.auto_levels_checkbox.setToolTip(
            "Set the powder pattern's contrast automatically; dragging the levels turns it off"
        )
        self.enlarge_spots_checkbox = QtWidgets.QCheckBox("Enlarge spots")
        self.enlarge_spots_checkbox.setChecked(True)
        self.enlarge_spots_checkbox.setToolTip(
            "Show each pixel of the powder pattern as the maximum of its 3x3 neighbourhood, so "
            "that single-pixel peaks stay visible when the image is shown smaller than its size"
        )
        self.reset_button = QtWidgets.QPushButton("Reset plots")
        self.reset_button.setToolTip(
            "Ask the monitor to reset the hit rate history, the virtual powder pattern and "
            "the peakogram"
        )
        self.reset_button.clicked.connect(self.reset_plots)
        counters.addWidget(self.rings_checkbox)
        counters.addWidget(self.enlarge_spots_checkbox)
        counters.addWidget(self.auto_levels_checkbox)
        counters.addWidget(self.reset_button)

        # -- hit rate ---------------------------------------------------------------------------
        self.hit_rate_widget = pg.PlotWidget(title="Hit rate")
        self.hit_rate_plot: pg.PlotItem = self.hit_rate_widget.getPlotItem()
        self.hit_rate_plot.setLabel("bottom", "time before the newest event", units="s")
        self.hit_rate_plot.setLabel("left", "hit rate, running average", units="%")
        self.hit_rate_plot.showGrid(x=True, y=True, alpha=0.3)
        self.hit_rate_plot.setDownsampling(auto=True, mode="peak")
        self.hit_rate_plot.setClipToView(True)
        # Named in the title, not a legend: a legend's sample lines would look like data.
        self.hit_rate_widget.setTitle("Hit rate (orange) and saturation rate (violet; red above "
                                      "the monitor's alarm)")
        self.hit_rate_curve = self.hit_rate_plot.plot(pen=pg.mkPen(HIT_RATE_COLOR, width=2))
        self.saturation_curve = self.hit_rate_plot.plot(
            pen=pg.mkPen(SATURATION_RATE_COLOR, width=2))
        self.saturation_alarm = False
        """Whether the latest saturation rate is above the monitor's alarm limit."""
        self.current_hit_rate_line = pg.InfiniteLine(
            angle=0,
            movable=False,
            pen=pg.mkPen(CURRENT_HIT_RATE_COLOR, width=1, style=QtCore.Qt.DashLine),
            label="{value:.2f} %",
            labelOpts={
                "color": CURRENT_HIT_RATE_COLOR,
                "position": 0.02,
                "anchors": [(0.0, 1.0), (0.0, 0.0)],
            },
        )
        self.current_hit_rate_line.setVisible(False)
        self.hit_rate_plot.addItem(self.current_hit_rate_line, ignoreBounds=True)

        # -- virtual powder pattern ---------------------------------------------------------------
        self.powder_widget = pg.GraphicsLayoutWidget()
        self.powder_plot: pg.PlotItem = self.powder_widget.addPlot(title="Virtual powder pattern")
        self.powder_plot.setAspectLocked(True)
        self.powder_plot.invertY(True)
        self.powder_plot.setLabel("bottom", "column (pixels)")
        self.powder_plot.setLabel("left", "row (pixels)")
        self.powder_image = pg.ImageItem(axisOrder="row-major")
        self.powder_plot.addItem(self.powder_image)
        self.powder_histogram = pg.HistogramLUTItem()
        self.powder_histogram.setImageItem(self.powder_image)
        self.powder_histogram.gradient.loadPreset("inferno")
        self.powder_histogram.axis.setWidth(60)  # room for 6-digit photon counts
        self.powder_widget.addItem(self.powder_histogram)
        self.powder_levels = LevelsControl(
            self.powder_histogram,
            self.auto_levels_checkbox,
            # The virtual powder pattern is sparse, with a long tail of strong peaks: levels
            # from the non-zero pixels only, saturating the strongest 10 % of them.
            lambda image: robust_levels(image, high=90.0, positive_only=True),
        )
        self._powder: np.ndarray | None = None
        self.enlarge_spots_checkbox.toggled.connect(self._show_powder)
        self.resolution_rings = ResolutionRings(self.powder_plot, resolution_rings)
        self.rings_checkbox.toggled.connect(self.resolution_rings.set_visible)
        self.cursor_label = QtWidgets.QLabel(" ")
        self.powder_plot.scene().sigMouseMoved.connect(self._mouse_moved)

        # -- peakogram ----------------------------------------------------------------------------
        self.peakogram_widget = pg.PlotWidget(title="Peakogram")
        self.peakogram_plot: pg.PlotItem = self.peakogram_widget.getPlotItem()
        self.peakogram_plot.setLabel("bottom", "distance from the beam (pixels)")
        self.peakogram_plot.setLabel("left", "peak intensity (photons)")
        self.peakogram_image = pg.ImageItem(axisOrder="col-major")  # [radius, intensity]
        self.peakogram_plot.addItem(self.peakogram_image)
        self.peakogram_colorbar = pg.ColorBarItem(
            values=(0.0, 1.0),
            colorMap=pg.colormap.get("viridis"),
            label="log10(1 + peaks)",
            interactive=False,
        )
        self.peakogram_colorbar.setImageItem(self.peakogram_image, insert_in=self.peakogram_plot)

        # -- layout -------------------------------------------------------------------------------
        right = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        right.addWidget(self.hit_rate_widget)
        right.addWidget(self.peakogram_widget)
        powder_box = QtWidgets.QWidget()
        powder_layout = QtWidgets.QVBoxLayout(powder_box)
        powder_layout.setContentsMargins(0, 0, 0, 0)
        powder_layout.addWidget(self.powder_widget, stretch=1)
        powder_layout.addWidget(self.cursor_label)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Horizontal)
        splitter.addWidget(powder_box)
        splitter.addWidget(right)
        splitter.setSizes([700, 500])
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addLayout(counters)
        layout.addWidget(splitter, stretch=1)
        self.setCentralWidget(central)
        self.resize(1400, 850)
        self.start()

    # -- showing data ---------------------------------------------------------------------------

    def _show_saturation(self, data: dict, history_times: np.ndarray) -> None:
        """The saturation rate curve (absent from older monitors' messages), red above the
        monitor's alarm limit, and its counter."""
        if "saturation_rate_history" not in data:
            self.saturation_curve.setData([], [])
            return
        rate = data.get("saturation_rate", math.nan)
        self.saturation_alarm = rate > data.get("saturation_rate_alarm", math.inf)
        color = SATURATION_ALARM_COLOR if self.saturation_alarm else SATURATION_RATE_COLOR
        self.saturation_curve.setPen(pg.mkPen(color, width=3 if self.saturation_alarm else 2))
        self.saturation_curve.setData(history_times - data["timestamp"],
                                      np.asarray(data["saturation_rate_history"]),
                                      connect="finite")
        label = self.counter_labels["saturation_rate"]
        label.setText(f"{rate:.1f} %")
        label.setStyleSheet(f"color: rgb{SATURATION_ALARM_COLOR};" if self.saturation_alarm
                            else "")

    def display(self, message: ReceivedMessage) -> None:
        """Shows one ``omdata`` message in every panel."""
        data = message.data

        history_times = np.asarray(data["hit_rate_timestamp_history"], dtype=np.float64)
        history = np.asarray(data["hit_rate_history"], dtype=np.float64)
        self.hit_rate_curve.setData(history_times - data["timestamp"], history, connect="finite")
        hit_rate = data["hit_rate"]
        self.current_hit_rate_line.setVisible(math.isfinite(hit_rate))
        if math.isfinite(hit_rate):
            self.current_hit_rate_line.setValue(hit_rate)
        self._show_saturation(data, history_times)

        powder = data["virtual_powder_plot"]
        self._powder = powder
        self._show_powder()
        self._geometry = (
            data["beam_center"],
            data["beam_energy"],
            data["detector_distance"],
            data["pixel_size"],
        )
        self.resolution_rings.update_geometry(*self._geometry, image_shape=powder.shape)

        peakogram = np.asarray(data["peakogram"], dtype=np.float64)
        if peakogram.size:
            log_counts = np.log10(1.0 + np.clip(np.nan_to_num(peakogram), 0.0, None))
            self.peakogram_image.setImage(log_counts, autoLevels=False)
            radius_bin = data["peakogram_radius_bin_size"]
            intensity_bin = data["peakogram_intensity_bin_size"]
            if not (math.isfinite(radius_bin) and radius_bin > 0):
                radius_bin = 1.0
            if not (math.isfinite(intensity_bin) and intensity_bin > 0):
                intensity_bin = 1.0
            self.peakogram_image.setRect(
                QtCore.QRectF(
                    0.0, 0.0, peakogram.shape[0] * radius_bin, peakogram.shape[1] * intensity_bin
                )
            )
            self.peakogram_colorbar.setLevels((0.0, max(float(log_counts.max()), 1.0)))
            self.peakogram_image.setVisible(True)
        else:
            self.peakogram_image.setVisible(False)

        self.counter_labels["events"].setText(f"{data['num_events']:,}")
        self.counter_labels["hits"].setText(f"{data['num_hits']:,}")
        self.counter_labels["hit_rate"].setText(f"{hit_rate:.2f} %")
        self.counter_labels["events_per_second"].setText(f"{data['events_per_second']:.1f}")
        self.counter_labels["newest_event"].setText(_format_time(data["timestamp"]))
        problems = data["problems"]
        self.problems_label.setText(
            "monitor problems: "
            + (", ".join(f"{kind} {count}" for kind, count in sorted(problems.items())) or "none")
            + _lost_ranks_and_restarts(data)
        )
        self.saving_label.setText(describe_hit_saving(data.get("hit_saving")))
        self.announced_responding_url = data["responding_url"]

    def _show_powder(self) -> None:
        if self._powder is None:
            return
        image = self._powder
        if self.enlarge_spots_checkbox.isChecked():
            image = enlarge_spots(image)
        self.powder_image.setImage(image, autoLevels=False)
        self.powder_levels.apply(image)

    def _mouse_moved(self, scene_position: QtCore.QPointF) -> None:
        if self._geometry is None or not self.powder_plot.sceneBoundingRect().contains(
            scene_position
        ):
            return
        point = self.powder_plot.vb.mapSceneToView(scene_position)
        (col, row), energy, distance, pixel_size = self._geometry
        x, y = point.x() - PIXEL_CENTRE_OFFSET, point.y() - PIXEL_CENTRE_OFFSET
        resolution = resolution_at_radius(math.hypot(x - col, y - row), energy, distance, pixel_size)
        text = f"column {x:.0f}, row {y:.0f}"
        if resolution is not None:
            text += f", resolution {resolution:.2f} Å"
        self.cursor_label.setText(text)

    # -- reset ----------------------------------------------------------------------------------

    @property
    def responding_url(self) -> str | None:
        """Where "Reset plots" requests go: the override, else the URL the monitor announced."""
        url = self.responding_url_override or self.announced_responding_url
        return None if url is None else resolve_responding_url(url, self.url)

    def reset_plots(self) -> None:
        """Sends ``resetplots`` to the monitor without waiting; the reply shows in the status bar."""
        if self._requests.busy:
            return
        url = self.responding_url
        if url is None:
            self.statusBar().showMessage(
                "Reset plots: the monitor announced no responding URL (see --responding-url)"
            )
            return
        self._requests.send(url, RESET_REQUEST)
        self.reset_button.setEnabled(False)
        self.statusBar().showMessage(f"Reset plots: request sent to {url}…")
        self._request_timer.start()

    def _poll_request(self) -> None:
        result = self._requests.poll()
        if result is None:
            return
        self._request_timer.stop()
        self.reset_button.setEnabled(True)
        self.last_request_result = result
        self.statusBar().showMessage(f"Reset plots: {result.text}")

    def shutdown(self) -> None:
        self._request_timer.stop()
        self._requests.close()
        super().shutdown()


def enlarge_spots(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Each pixel replaced by the maximum of its ``size`` x ``size`` neighbourhood (NaN as 0).

    Shown smaller than its size, an image loses most single-pixel spots (the display samples
    one pixel in several); enlarged, they survive down to 1 / ``size`` of the full size.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    return scipy.ndimage.maximum_filter(image, size=size, mode="constant", cval=0.0)


def describe_hit_saving(status: Any) -> str:
    """One line for ``omdata``'s ``hit_saving`` map (docs/broadcast.md): frames saved, files,
    MB, MB/s, and why saving stopped; empty when saving is off (None) or the map is not one."""
    if not isinstance(status, dict):
        return ""
    try:
        text = (f"saved: {int(status['frames_saved']):,} frames, "
                f"{int(status['files_written']):,} files, "
                f"{status['bytes_written'] / 1e6:,.1f} MB, "
                f"{status['bytes_per_second'] / 1e6:.1f} MB/s")
        if status.get("frames_not_saved") or status.get("errors"):
            text += (f" — NOT SAVED: {int(status['frames_not_saved']):,} frames; "
                     + "; ".join(str(error) for error in status.get("errors") or []))
    except (KeyError, TypeError, ValueError):
        return "saved: (malformed status)"
    return text


def _lost_ranks_and_restarts(data: dict) -> str:
    """"; processing rank 2 lost (why); monitor restarted 1 times" for the status, or ""."""
    lost = data.get("processing_ranks_lost") or {}
    restarts = data.get("monitor_restarts") or 0
    text = "".join(f"; processing rank {rank} lost ({why})" for rank, why in sorted(lost.items()))
    return text + (f"; monitor restarted {restarts} times" if restarts else "")


def _format_time(timestamp: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return "?"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``om_crystallography_gui.py``."""
    parser = argparse.ArgumentParser(
        prog="om_crystallography_gui.py",
        description="Shows the hit rate, the virtual powder pattern, the peakogram and the "
        "counters broadcast by an om monitor (omdata messages).",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--responding-url",
        metavar="URL",
        help="the monitor's responding URL for 'Reset plots' (default: the one it announces)",
    )
    parser.add_argument(
        "--resolution-rings",
        type=parse_resolution_list,
        default=DEFAULT_RESOLUTION_RINGS,
        metavar="LIST",
        help="resolution rings in Å, comma-separated (default 2,3,4,6; '' for none)",
    )
    parser.add_argument(
        "--request-timeout",
        type=positive_float_type,
        default=2.0,
        metavar="S",
        help="seconds to wait for the monitor's reply to a request (default 2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``om_crystallography_gui.py``."""
    args = build_parser().parse_args(argv)
    return run_gui(
        lambda options: CrystallographyGui(
            options.url,
            responding_url=options.responding_url,
            refresh_rate=options.refresh_rate,
            resolution_rings=options.resolution_rings,
            stale_after=options.stale_after,
            request_timeout=options.request_timeout,
        ),
        args,
        "om_crystallography_gui.py",
    )


if __name__ == "__main__":
    sys.exit(main())
