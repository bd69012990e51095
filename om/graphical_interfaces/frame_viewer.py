# SPDX-License-Identifier: GPL-3.0-or-later
"""The frame viewer: the newest detector frame with its peaks circled.

Start it with ``om_frame_viewer.py tcp://monitor-host:12321``. It shows the newest
``omframedata`` frame (geometry-assembled, in photons; gaps and bad pixels are transparent)
with a hollow circle around every peak the monitor found (a larger red one around the peaks
with saturated pixels), a histogram to adjust the contrast, and the event id, hit flag and
number of peaks above the image.

The frames shown are kept in a buffer of the last ``--buffer`` frames (20 by default).
"Back" and "Forward" step through it; stepping back pauses the viewer. While paused, the
buffer is frozen (the frames being inspected do not scroll away) and newer frames are only
counted; "Pause" again (or "Live") resumes with the newest frame. Keys: Left / Right step,
Space pauses or resumes, End goes live.
"""

import argparse
import collections
import datetime
import sys
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from om.graphical_interfaces.common import (
    DEFAULT_REFRESH_RATE,
    DEFAULT_STALE_AFTER,
    PEAK_COLOR,
    PIXEL_CENTRE_OFFSET,
    SATURATED_PEAK_COLOR,
    LevelsControl,
    MonitorWindow,
    add_common_arguments,
    positive_float_type,
    positive_int_type,
    robust_levels,
    run_gui,
)
from om.graphical_interfaces.subscriber import (
    OMFRAMEDATA_TAG,
    VALIDATORS,
    ReceivedMessage,
    Subscriber,
)

DEFAULT_BUFFER_SIZE = 20
DEFAULT_PEAK_CIRCLE_SIZE = 12.0
"""Diameter of the peak circles, in image pixels."""
GAP_COLOR = (25, 25, 70)
"""What shows through invalid pixels and gaps (NaN in the frame)."""


class FrameViewer(MonitorWindow):
    """The main window of the frame viewer.

    Args:
        url: the monitor's data broadcast URL.
        buffer_size: how many of the latest frames to keep for Back / Forward.
        refresh_rate: display updates per second (at most).
        stale_after: seconds without data after which the status bar says "no data for N s".
        peak_circle_size: the peak circles' diameter, in image pixels.
        subscriber: a subscriber to use instead of a new one.
        tag: the tag of the frames (``omframedata``; the parameter tweaker subclasses the
            viewer for ``ondaframedata``).
    """

    def __init__(
        self,
        url: str,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        refresh_rate: float = DEFAULT_REFRESH_RATE,
        stale_after: float = DEFAULT_STALE_AFTER,
        peak_circle_size: float = DEFAULT_PEAK_CIRCLE_SIZE,
        subscriber: Subscriber | None = None,
        parent: QtWidgets.QWidget | None = None,
        tag: str = OMFRAMEDATA_TAG,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("the buffer must hold at least one frame")
        super().__init__(
            url,
            tag,
            refresh_rate=refresh_rate,
            stale_after=stale_after,
            subscriber=subscriber or Subscriber(url, {tag: VALIDATORS[tag]}),
            parent=parent,
        )
        self.setWindowTitle(f"om frame viewer — {url}")
        self.buffer: collections.deque[ReceivedMessage] = collections.deque(maxlen=buffer_size)
        """The latest frames received (oldest first); frozen while paused."""
        self.current: ReceivedMessage | None = None
        """The frame on screen."""
        self.newer_while_paused = 0
        """Frames received since the viewer was paused (not buffered)."""
        self._newest_while_paused: ReceivedMessage | None = None
        self._paused = False

        # -- controls ---------------------------------------------------------------------------
        self.back_button = QtWidgets.QPushButton("◀ Back")
        self.forward_button = QtWidgets.QPushButton("Forward ▶")
        self.pause_button = QtWidgets.QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.live_button = QtWidgets.QPushButton("Live")
        self.auto_levels_checkbox = QtWidgets.QCheckBox("Auto levels")
        self.auto_levels_checkbox.setChecked(True)
        self.auto_levels_checkbox.setToolTip(
            "Set the contrast from each frame; dragging the levels turns it off"
        )
        self.peaks_checkbox = QtWidgets.QCheckBox("Peaks")
        self.peaks_checkbox.setChecked(True)
        self.back_button.clicked.connect(self.back)
        self.forward_button.clicked.connect(self.forward)
        self.pause_button.toggled.connect(self.set_paused)
        self.live_button.clicked.connect(self.go_live)
        for key, slot in (
            (QtCore.Qt.Key_Left, self.back),
            (QtCore.Qt.Key_Right, self.forward),
            (QtCore.Qt.Key_Space, self.pause_button.toggle),
            (QtCore.Qt.Key_End, self.go_live),
        ):
            QtWidgets.QShortcut(QtGui.QKeySequence(key), self, activated=slot)

        self.info_label = QtWidgets.QLabel("waiting for frames…")
        font = self.info_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        self.info_label.setFont(font)
        self.info_label.setTextInteractionFlags(QtCore.Qt.TextSelectableByMouse)
        self.position_label = QtWidgets.QLabel("")

        # -- image ------------------------------------------------------------------------------
        self.image_widget = pg.GraphicsLayoutWidget()
        self.image_plot: pg.PlotItem = self.image_widget.addPlot()
        self.image_plot.setAspectLocked(True)
        self.image_plot.invertY(True)
        self.image_plot.setLabel("bottom", "column (pixels)")
        self.image_plot.setLabel("left", "row (pixels)")
        # NaN pixels (gaps, bad pixels) are transparent: a dark blue background tells them from 0.
        self.image_plot.vb.setBackgroundColor(GAP_COLOR)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image_plot.addItem(self.image)
        self.peaks = pg.ScatterPlotItem(
            pxMode=False,
            symbol="o",
            size=peak_circle_size,
            pen=pg.mkPen(PEAK_COLOR, width=1.5),
            brush=pg.mkBrush(None),
        )
        self.image_plot.addItem(self.peaks, ignoreBounds=True)
        self.peaks_checkbox.toggled.connect(self.peaks.setVisible)
        # Peaks with saturated pixels (peak_list_saturated_pixels > 0): red, larger circles.
        self.saturated_peaks = pg.ScatterPlotItem(
            pxMode=False, symbol="o", size=peak_circle_size * 1.5,
            pen=pg.mkPen(SATURATED_PEAK_COLOR, width=2.5), brush=pg.mkBrush(None))
        self.image_plot.addItem(self.saturated_peaks, ignoreBounds=True)
        self.peaks_checkbox.toggled.connect(self.saturated_peaks.setVisible)
        self.histogram = pg.HistogramLUTItem()
        self.histogram.setImageItem(self.image)
        self.image_widget.addItem(self.histogram)
        self.levels = LevelsControl(
            self.histogram, self.auto_levels_checkbox, lambda image: robust_levels(image, 1, 99.7)
        )

        # -- layout -------------------------------------------------------------------------------
        controls = QtWidgets.QHBoxLayout()
        for widget in (self.back_button, self.pause_button, self.forward_button, self.live_button):
            controls.addWidget(widget)
        controls.addWidget(self.position_label)
        controls.addStretch(1)
        controls.addWidget(self.peaks_checkbox)
        controls.addWidget(self.auto_levels_checkbox)
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addWidget(self.info_label)
        layout.addWidget(self.image_widget, stretch=1)
        layout.addLayout(controls)
        self.setCentralWidget(central)
        self.resize(1000, 950)
        self._update_controls()
        self.start()

    # -- receiving ------------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Whether the viewer is paused (not following new frames)."""
        return self._paused

    def display(self, message: ReceivedMessage) -> None:
        """Takes a new frame: shown at once when live, counted when paused."""
        if self._paused:
            self._newest_while_paused = message
            self.newer_while_paused += 1
            self._update_controls()
            return
        self.buffer.append(message)
        self._show(message)

    # -- navigation ---------------------------------------------------------------------------

    def _position(self) -> int | None:
        for index, message in enumerate(self.buffer):
            if message is self.current:
                return index
        return None

    def back(self) -> None:
        """Shows the previous buffered frame, pausing the viewer."""
        if self.current is None:
            return
        self.set_paused(True)
        position = self._position()
        if position is not None and position > 0:
            self._show(self.buffer[position - 1])

    def forward(self) -> None:
        """Shows the next buffered frame (the viewer stays paused)."""
        position = self._position()
        if position is not None and position + 1 < len(self.buffer):
            self._show(self.buffer[position + 1])

    def set_paused(self, paused: bool) -> None:
        """Pauses (freezes the buffer and the display) or resumes with the newest frame."""
        paused = bool(paused)
        if self.pause_button.isChecked() != paused:
            self.pause_button.setChecked(paused)  # calls set_paused again, harmlessly
        if paused == self._paused:
            return
        self._paused = paused
        if not paused:
            newest = self._newest_while_paused
            self._newest_while_paused = None
            self.newer_while_paused = 0
            if newest is not None:
                self.buffer.append(newest)
            if self.buffer:
                self._show(self.buffer[-1])
        self._update_controls()

    def go_live(self) -> None:
        """Resumes following the newest frame."""
        self.set_paused(False)

    # -- drawing --------------------------------------------------------------------------------

    def _show(self, message: ReceivedMessage) -> None:
        data = message.data
        frame = data["frame_data"]
        self.image.setImage(frame, autoLevels=False)
        self.levels.apply(frame)
        x = np.asarray(data["peak_list_x_in_frame"], dtype=np.float64)
        y = np.asarray(data["peak_list_y_in_frame"], dtype=np.float64)
        finite = np.isfinite(x) & np.isfinite(y)
        self.peaks.setData(
            x=x[finite] + PIXEL_CENTRE_OFFSET, y=y[finite] + PIXEL_CENTRE_OFFSET
        )
        saturated = finite & (np.asarray(data.get("peak_list_saturated_pixels",
                                                  np.zeros(x.size))) > 0)
        self.saturated_peaks.setData(x=x[saturated] + PIXEL_CENTRE_OFFSET,
                                     y=y[saturated] + PIXEL_CENTRE_OFFSET)
        self.current = message
        self._update_controls()

    def _info_text(self, data: dict) -> str:
        """The label above the frame on screen."""
        try:
            when = datetime.datetime.fromtimestamp(data["timestamp"]).strftime("%H:%M:%S.%f")[:-3]
        except (ValueError, OverflowError, OSError):
            when = "?"
        return (f"event {data['event_id']}   |   {'HIT' if data['frame_is_hit'] else 'no hit'}"
                f"   |   {data['num_peaks']} peaks   |   {when}")

    def _update_controls(self) -> None:
        message = self.current
        if message is not None:
            self.info_label.setText(self._info_text(message.data))
        position = self._position()
        state = "paused" if self._paused else "live"
        if self._paused and self.newer_while_paused:
            state += f", {self.newer_while_paused} newer frame(s) received"
        where = f"frame {position + 1}/{len(self.buffer)}" if position is not None else "no frame"
        self.position_label.setText(f"{where} ({state})")
        self.back_button.setEnabled(position is not None and position > 0)
        self.forward_button.setEnabled(position is not None and position + 1 < len(self.buffer))
        self.live_button.setEnabled(self._paused)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``om_frame_viewer.py``."""
    parser = argparse.ArgumentParser(
        prog="om_frame_viewer.py",
        description="Shows the latest detector frames broadcast by an om monitor "
        "(omframedata messages) with their peaks.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--buffer",
        type=positive_int_type,
        default=DEFAULT_BUFFER_SIZE,
        metavar="N",
        help=f"how many of the latest frames Back / Forward go through (default {DEFAULT_BUFFER_SIZE})",
    )
    parser.add_argument(
        "--peak-size",
        type=positive_float_type,
        default=DEFAULT_PEAK_CIRCLE_SIZE,
        metavar="PIXELS",
        help=f"diameter of the peak circles in image pixels (default {DEFAULT_PEAK_CIRCLE_SIZE:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``om_frame_viewer.py``."""
    args = build_parser().parse_args(argv)
    return run_gui(
        lambda options: FrameViewer(
            options.url,
            buffer_size=options.buffer,
            refresh_rate=options.refresh_rate,
            stale_after=options.stale_after,
            peak_circle_size=options.peak_size,
        ),
        args,
        "om_frame_viewer.py",
    )


if __name__ == "__main__":
    sys.exit(main())
