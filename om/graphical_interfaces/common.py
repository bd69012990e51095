# SPDX-License-Identifier: GPL-3.0-or-later
"""What the GUIs share: the window base class, resolution rings, screenshots, start-up.

:class:`MonitorWindow` owns a :class:`~om.graphical_interfaces.subscriber.Subscriber`, takes
the newest message from it on a timer (the refresh rate), shows the age of the newest data
and the number of malformed messages in the status bar, and stops the subscriber on close.
A subclass only implements :meth:`MonitorWindow.display`.
"""

import argparse
import logging
import math
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from om.graphical_interfaces.qt_platform import xcb_problem
from om.graphical_interfaces.subscriber import VALIDATORS, ReceivedMessage, Subscriber
from om.lib.resolution import (  # noqa: F401 (re-exported: the GUIs import them from here)
    HC_EV_ANGSTROM,
    resolution_at_radius,
    resolution_ring_radius,
)

logger = logging.getLogger("om.gui")

DEFAULT_REFRESH_RATE = 10.0
"""Default refresh rate of the GUIs, in Hz."""

MAX_REFRESH_RATE = 60.0
"""The highest refresh rate accepted, in Hz."""

DEFAULT_STALE_AFTER = 5.0
"""Seconds without data after which a GUI says "no data for N s"."""

PIXEL_CENTRE_OFFSET = 0.5
"""Image pixel (row r, col c) covers [c, c+1] x [r, r+1] in the plots: its centre is c + 0.5."""

HIT_RATE_COLOR = (255, 170, 0)
CURRENT_HIT_RATE_COLOR = (90, 200, 255)
RESOLUTION_RING_COLOR = (60, 230, 60)
PEAK_COLOR = (0, 255, 255)
SATURATED_PEAK_COLOR = (255, 60, 60)
SATURATION_RATE_COLOR = (200, 120, 255)
SATURATION_ALARM_COLOR = (255, 40, 40)
STALE_STYLE = "color: rgb(230, 40, 40); font-weight: bold;"

# HC_EV_ANGSTROM and the radius/resolution conversions live in om.lib.resolution (no Qt there).


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------


def parse_resolution_list(text: str) -> tuple[float, ...]:
    """Parses ``"2,3,4,6"`` (commas or spaces) into positive resolutions in Angstrom.

    Raises:
        argparse.ArgumentTypeError: for anything else (usable directly as an argparse type).
    """
    try:
        values = tuple(float(item) for item in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(not (math.isfinite(value) and value > 0) for value in values):
        raise argparse.ArgumentTypeError(f"resolutions must be positive numbers: {text!r}")
    return values


def _checked_number(text: str, convert: Callable[[str], Any], what: str,
                    valid: Callable[[Any], bool], error: str) -> Any:
    """``convert(text)``, or argparse.ArgumentTypeError ``not {what}`` when it cannot, or
    ``error`` (formatted with ``text`` and ``value``) when ``valid(value)`` is false."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(error.format(text=text, value=value))
    return value


def refresh_rate_type(text: str) -> float:
    """argparse type of a refresh rate: a number in (0, MAX_REFRESH_RATE] Hz."""
    return _checked_number(
        text, float, "a number", lambda value: 0 < value <= MAX_REFRESH_RATE,
        f"the refresh rate must be in (0, {MAX_REFRESH_RATE:g}] Hz, got {{text}}")


def positive_int_type(text: str) -> int:
    """argparse type of a positive integer."""
    return _checked_number(text, int, "an integer", lambda value: value >= 1,
                           "must be at least 1, got {value}")


def positive_float_type(text: str) -> float:
    """argparse type of a positive number."""
    return _checked_number(text, float, "a number",
                           lambda value: math.isfinite(value) and value > 0,
                           "must be a positive number, got {text}")


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def robust_levels(
    image: np.ndarray, low: float = 1.0, high: float = 99.7, positive_only: bool = False
) -> tuple[float, float]:
    """Display levels from percentiles of the finite pixels of a subsample of ``image``.

    NaN (gaps, bad pixels) and infinities are ignored; with ``positive_only`` the zero
    background of a sparse image (a virtual powder pattern) is ignored too and the low level
    is 0. Always returns ``low < high``.
    """
    step = max(1, int(math.sqrt(image.size / 250_000)))
    sample = np.asarray(image[::step, ::step] if image.ndim == 2 else image, dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if positive_only:
        sample = sample[sample > 0]
    if sample.size == 0:
        return 0.0, 1.0
    low_value, high_value = np.percentile(sample, (low, high))
    if positive_only:
        low_value = 0.0
    low_value, high_value = float(low_value), float(high_value)
    if not high_value > low_value:
        high_value = low_value + max(1.0, abs(low_value))
    return low_value, high_value


class LevelsControl(QtCore.QObject):
    """Automatic contrast for an image shown with a HistogramLUTItem, until the user takes over.

    While ``auto`` is checked, every new image gets levels from :func:`robust_levels`; as soon
    as the user drags the histogram's levels, the box is unchecked and the levels stay.
    """

    def __init__(
        self,
        histogram: pg.HistogramLUTItem,
        checkbox: QtWidgets.QCheckBox,
        levels_function: Callable[[np.ndarray], tuple[float, float]],
    ) -> None:
        super().__init__(checkbox)
        self._histogram = histogram
        self._checkbox = checkbox
        self._levels_function = levels_function
        self._setting = False
        self._image: np.ndarray | None = None
        histogram.sigLevelChangeFinished.connect(self._user_changed_levels)
        checkbox.toggled.connect(self._auto_toggled)

    def apply(self, image: np.ndarray) -> None:
        """Sets the levels for a new ``image`` if automatic (call after setImage)."""
        self._image = image
        if self._checkbox.isChecked():
            self._set_levels(*self._levels_function(image))

    def _set_levels(self, low: float, high: float) -> None:
        self._setting = True
        try:
            self._histogram.setLevels(low, high)
        finally:
            self._setting = False

    def _user_changed_levels(self) -> None:
        if not self._setting and self._checkbox.isChecked():
            self._checkbox.setChecked(False)

    def _auto_toggled(self, checked: bool) -> None:
        if checked and self._image is not None:
            self._set_levels(*self._levels_function(self._image))


def qimage_to_array(image: QtGui.QImage) -> np.ndarray:
    """Copies a QImage into a ``(height, width, 4)`` uint8 RGBA numpy array."""
    rgba = image.convertToFormat(QtGui.QImage.Format_RGBA8888)
    width, height, stride = rgba.width(), rgba.height(), rgba.bytesPerLine()
    pointer = rgba.constBits()
    pointer.setsize(height * stride)
    array = np.frombuffer(pointer, dtype=np.uint8).reshape(height, stride)
    return array[:, : width * 4].reshape(height, width, 4).copy()


def save_screenshot(widget: QtWidgets.QWidget, path: str | pathlib.Path) -> pathlib.Path:
    """Saves what ``widget`` (e.g. a whole GUI window) shows now as an image file.

    The format follows the file name's extension (``.png`` recommended); missing parent
    folders are created. Works with ``QT_QPA_PLATFORM=offscreen``.

    Returns:
        The path written.

    Raises:
        OSError: when the image cannot be written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixmap = widget.grab()
    if pixmap.isNull() or not pixmap.save(str(path)):
        raise OSError(f"cannot save a screenshot to {path}")
    return path


# ----------------------------------------------------------------------------------------------
# Resolution rings on an image
# ----------------------------------------------------------------------------------------------


class ResolutionRings:
    """Circles with resolution labels (``"3 Å"``) drawn around the beam on an image plot.

    Args:
        plot: the PlotItem showing the image (in image pixel coordinates).
        resolutions: the resolutions to draw, in Angstrom.
        color: the rings' and labels' colour.
    """

    def __init__(
        self,
        plot: pg.PlotItem,
        resolutions: Sequence[float] = (),
        color: tuple[int, int, int] = RESOLUTION_RING_COLOR,
    ) -> None:
        self._plot = plot
        self._color = color
        self._pen = pg.mkPen(color=color, width=1.5)
        self._resolutions = tuple(resolutions)
        self._geometry: tuple | None = None
        self._visible = True
        self.items: list[tuple[float, QtWidgets.QGraphicsEllipseItem, pg.TextItem]] = []
        """The drawn rings: (resolution in Å, circle, label)."""

    @property
    def resolutions(self) -> tuple[float, ...]:
        return self._resolutions

    def set_resolutions(self, resolutions: Sequence[float]) -> None:
        """Changes the list of rings."""
        self._resolutions = tuple(resolutions)
        self._redraw()

    def set_visible(self, visible: bool) -> None:
        """Shows or hides all rings."""
        self._visible = visible
        for _, circle, label in self.items:
            circle.setVisible(visible)
            label.setVisible(visible)

    def update_geometry(
        self,
        beam_center: tuple[float, float],
        beam_energy: float,
        detector_distance: float,
        pixel_size: float,
        image_shape: tuple[int, int] | None = None,
    ) -> None:
        """Redraws the rings if the geometry changed (cheap when it did not).

        With ``image_shape`` (rows, cols), each label goes where its ring crosses the image
        (the top of the ring if it is inside, else the first of the other seven compass points
        that is), so rings larger than the image still get a visible label.
        """
        geometry = (
            beam_center[0],
            beam_center[1],
            beam_energy,
            detector_distance,
            pixel_size,
            None if image_shape is None else tuple(image_shape),
        )
        if geometry != self._geometry:
            self._geometry = geometry
            self._redraw()

    def _redraw(self) -> None:
        for _, circle, label in self.items:
            self._plot.removeItem(circle)
            self._plot.removeItem(label)
        self.items = []
        if self._geometry is None:
            return
        col, row, energy, distance, pixel_size, image_shape = self._geometry
        if not (math.isfinite(col) and math.isfinite(row)):
            return
        x0, y0 = col + PIXEL_CENTRE_OFFSET, row + PIXEL_CENTRE_OFFSET
        for resolution in self._resolutions:
            radius = resolution_ring_radius(resolution, energy, distance, pixel_size)
            if radius is None:
                continue
            circle = QtWidgets.QGraphicsEllipseItem(x0 - radius, y0 - radius, 2 * radius, 2 * radius)
            circle.setPen(self._pen)
            circle.setBrush(QtGui.QBrush(QtCore.Qt.NoBrush))
            label = pg.TextItem(f"{resolution:g} Å", color=self._color, anchor=(0.5, 1.0))
            label.setPos(*self._label_position(x0, y0, radius, image_shape))
            circle.setVisible(self._visible)
            label.setVisible(self._visible)
            self._plot.addItem(circle, ignoreBounds=True)
            self._plot.addItem(label, ignoreBounds=True)
            self.items.append((resolution, circle, label))

    @staticmethod
    def _label_position(
        x0: float, y0: float, radius: float, image_shape: tuple[int, int] | None
    ) -> tuple[float, float]:
        # The y axis points down: the top of the ring is at y0 - radius (angle -90 degrees).
        top = (x0, y0 - radius)
        if image_shape is None:
            return top
        rows, cols = image_shape
        for degrees in (-90, -45, -135, 0, 180, 45, 135, 90):
            angle = math.radians(degrees)
            x, y = x0 + radius * math.cos(angle), y0 + radius * math.sin(angle)
            if 0 <= x <= cols and 0 <= y <= rows:
                return x, y
        return top


# ----------------------------------------------------------------------------------------------
# The window base class
# ----------------------------------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """``"0.4 s"``, ``"12 s"``, ``"3 min 5 s"``, ``"2 h 1 min"``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class MonitorWindow(QtWidgets.QMainWindow):
    """A main window fed by one tag of the monitor's broadcasts.

    Args:
        url: the monitor's data broadcast URL.
        tag: the tag to show (``omdata`` or ``omframedata``).
        refresh_rate: how often, in Hz, the newest message is taken and shown.
        stale_after: seconds without data after which the status bar says "no data for N s".
        subscriber: a subscriber to use instead of a new one (it is started and stopped here).

    Raises:
        zmq.ZMQError: when the URL is not a valid ZeroMQ endpoint.
    """

    def __init__(
        self,
        url: str,
        tag: str,
        *,
        refresh_rate: float = DEFAULT_REFRESH_RATE,
        stale_after: float = DEFAULT_STALE_AFTER,
        subscriber: Subscriber | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if not (0 < refresh_rate <= MAX_REFRESH_RATE):
            raise ValueError(f"refresh rate must be in (0, {MAX_REFRESH_RATE:g}] Hz")
        self.url = url
        self.tag = tag
        self.refresh_rate = refresh_rate
        self.stale_after = stale_after
        self.subscriber = subscriber or Subscriber(url, {tag: VALIDATORS[tag]})
        # Connect first: a bad URL fails here, before any widget exists.
        self.subscriber.start()
        self.last_message: ReceivedMessage | None = None
        """The newest message shown (None before the first one)."""
        self.num_displayed = 0
        """The number of messages shown so far."""
        self.num_display_errors = 0

        self.age_label = QtWidgets.QLabel()
        self.malformed_label = QtWidgets.QLabel()
        for label in (self.age_label, self.malformed_label):
            label.setContentsMargins(12, 0, 4, 0)
        self.statusBar().addPermanentWidget(self.malformed_label)
        self.statusBar().addPermanentWidget(self.age_label)

        self._refresh_timer = QtCore.QTimer(self)
        self._refresh_timer.setInterval(max(1, round(1000.0 / refresh_rate)))
        self._refresh_timer.timeout.connect(self.refresh)
        self._shut_down = False

    def start(self) -> None:
        """Starts refreshing (subclasses call it at the end of ``__init__``, once their widgets
        exist; the subscriber already receives from the end of ``MonitorWindow.__init__``)."""
        self._update_status()
        self._refresh_timer.start()

    @property
    def has_data(self) -> bool:
        """Whether at least one message was shown."""
        return self.last_message is not None

    def display(self, message: ReceivedMessage) -> None:
        """Shows a new message (implemented by each GUI)."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Takes the newest message, if any, shows it and updates the status bar."""
        message = self.subscriber.take(self.tag)
        if message is not None:
            try:
                self.display(message)
            except Exception:  # an exception escaping a Qt slot would abort the application
                self.num_display_errors += 1
                logger.exception("cannot display the %s message %d", self.tag, message.sequence)
                self.statusBar().showMessage(
                    f"could not display a {self.tag} message (see the log)", 10_000
                )
            else:
                self.last_message = message
                self.num_displayed += 1
        self._update_status()

    def _update_status(self) -> None:
        age = self.subscriber.seconds_since_last_message()
        if age is None:
            self.age_label.setText(f"waiting for data from {self.url}")
            self.age_label.setStyleSheet("")
        elif age > self.stale_after:
            self.age_label.setText(f"no data for {format_age(age)}")
            self.age_label.setStyleSheet(STALE_STYLE)
        else:
            self.age_label.setText(f"data received {format_age(age)} ago")
            self.age_label.setStyleSheet("")
        counts = self.subscriber.malformed_counts()
        total = sum(counts.values())
        self.malformed_label.setText(f"malformed messages: {total}")
        self.malformed_label.setToolTip(
            "\n".join(f"{kind}: {count}" for kind, count in sorted(counts.items()))
            or "no malformed messages"
        )
        self.malformed_label.setStyleSheet(STALE_STYLE if total else "")

    def shutdown(self) -> None:
        """Stops refreshing and receiving (called on close; safe to call twice)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._refresh_timer.stop()
        self.subscriber.stop()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        self.shutdown()
        super().closeEvent(event)


# ----------------------------------------------------------------------------------------------
# Start-up
# ----------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both GUIs accept."""
    parser.add_argument(
        "url", help="the monitor's data broadcast URL, e.g. tcp://monitor-host:12321"
    )
    parser.add_argument(
        "--refresh-rate",
        type=refresh_rate_type,
        default=DEFAULT_REFRESH_RATE,
        metavar="HZ",
        help=f"how often the display is updated (default {DEFAULT_REFRESH_RATE:g} Hz)",
    )
    parser.add_argument(
        "--stale-after",
        type=positive_float_type,
        default=DEFAULT_STALE_AFTER,
        metavar="S",
        help=f'say "no data for N s" after S seconds without data (default {DEFAULT_STALE_AFTER:g})',
    )
    parser.add_argument(
        "--screenshot",
        type=pathlib.Path,
        metavar="PATH",
        help="save a screenshot of the window to PATH once data has been shown, then quit",
    )
    parser.add_argument(
        "--screenshot-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="with --screenshot: wait S more seconds after the first data (default 0)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level (default INFO)",
    )


def missing_display() -> str | None:
    """Why no window can open here, or None: no ``DISPLAY``/``WAYLAND_DISPLAY`` and no
    ``QT_QPA_PLATFORM`` (e.g. ``offscreen``, for screenshots) chosen instead."""
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY") or \
            os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display (DISPLAY and WAYLAND_DISPLAY are not set): run it where a display is, "
            "with ssh -X, or offscreen for a screenshot: QT_QPA_PLATFORM=offscreen ... "
            "--screenshot PATH (docs/gui.md)")


def run_gui(
    window_factory: Callable[[argparse.Namespace], MonitorWindow],
    args: argparse.Namespace,
    application_name: str,
) -> int:
    """Creates the application and the window, runs the event loop, returns the exit code.

    Ctrl+C in the terminal closes the window. With ``args.screenshot``, the window is saved
    there once it has shown data (plus ``args.screenshot_delay`` seconds) and the GUI quits.
    """
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    reason = missing_display() or xcb_problem()
    if reason is not None:  # Qt would abort with a generic message (exit code 134)
        print(f"{application_name}: error: {reason}", file=sys.stderr)
        return 2
    # Only the program name: the options were parsed by argparse, not for Qt.
    application = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    application.setApplicationName(application_name)
    try:
        window = window_factory(args)
    except Exception as error:  # a bad URL and the like: one line, no traceback
        print(f"{application_name}: error: {error}", file=sys.stderr)
        return 2
    window.show()

    # Qt's event loop does not let Python see SIGINT: wake up regularly to let it.
    previous_handler = signal.signal(signal.SIGINT, lambda *_: (window.close(), application.quit()))
    wake_up = QtCore.QTimer(window)
    wake_up.timeout.connect(lambda: None)
    wake_up.start(200)

    exit_code = 0
    if args.screenshot is not None:
        state = {"first_data": None}

        def check_screenshot() -> None:
            nonlocal exit_code
            if not window.has_data:
                return
            now = QtCore.QElapsedTimer()
            if state["first_data"] is None:
                now.start()
                state["first_data"] = now
                return
            if state["first_data"].elapsed() < args.screenshot_delay * 1000:
                return
            screenshot_timer.stop()
            try:
                path = save_screenshot(window, args.screenshot)
                logger.info("screenshot saved to %s", path)
            except OSError as error:
                logger.error("%s", error)
                exit_code = 1
            window.close()
            application.quit()

        screenshot_timer = QtCore.QTimer(window)
        screenshot_timer.timeout.connect(check_screenshot)
        screenshot_timer.start(200)

    try:
        application.exec_()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        wake_up.stop()
        window.shutdown()
        window.deleteLater()
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.DeferredDelete)
    return exit_code
