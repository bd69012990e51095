# SPDX-License-Identifier: GPL-3.0-or-later
"""The crystallography parameter tweaker: peakfinder8 tuned on the frames the monitor gets now.

Start it with ``om_crystallography_parameter_tweaker.py tcp://monitor-host:12321 -c
monitor.yaml``. It receives the monitor's ``ondaframedata`` frames (the calibrated detector
frames it sends for CrystFEL, docs/crystfel.md: the slab peakfinder8 works on, with the
monitor's peaks; ``omframedata`` frames are assembled images, which peakfinder8 cannot take
back), and runs om's own peakfinder8 on them, built as the monitor builds it
(``om.processing_layer.crystallography.build_peakfinder8``: the geometry's radius map and
panels, the bad pixel map of ``monitor.yaml``) with the parameters on the screen, which start
from ``monitor.yaml``. With the monitor's parameters its peaks are the monitor's.

It is the frame viewer (Back / Forward through the last ``--buffer`` frames, Pause, Live) with
a parameter panel: changing a value redraws the peaks of the frame on screen; the label shows
the number of peaks, the hit decision with the limits on screen, and the monitor's count.
"Write monitor.yaml" writes a copy of the configuration with the chosen values (comments and
order kept) beside it and prints the command that restarts the monitor with it.
"""

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PyQt5 import QtWidgets

from om.graphical_interfaces.common import (
    DEFAULT_REFRESH_RATE,
    DEFAULT_STALE_AFTER,
    PIXEL_CENTRE_OFFSET,
    add_common_arguments,
    positive_int_type,
    run_gui,
)
from om.graphical_interfaces.frame_viewer import DEFAULT_BUFFER_SIZE, FrameViewer
from om.graphical_interfaces.subscriber import ONDAFRAMEDATA_TAG, ReceivedMessage
from om.lib.configuration_copy import write_configuration_copy
from om.lib.geometry import assemble, slab_to_assembled
from om.lib.parameters import MonitorParameters
from om.processing_layer.crystallography import (
    CrystallographyProcessing,
    build_peakfinder8,
    hit_decision,
)
from om.processing_layer.peakfinder8 import PeakList

PEAKFINDER8 = "peakfinder8_peak_detection"
CRYSTALLOGRAPHY = "crystallography"

#: The values on screen: (group, key, type, minimum, maximum, step).
TUNED = (
    (PEAKFINDER8, "adc_threshold", float, -1e6, 1e6, 0.5),
    (PEAKFINDER8, "minimum_snr", float, 0.01, 1e4, 0.5),
    (PEAKFINDER8, "min_pixel_count", int, 1, 10_000, 1),
    (PEAKFINDER8, "max_pixel_count", int, 1, 100_000, 1),
    (PEAKFINDER8, "local_bg_radius", int, 1, 1000, 1),
    (PEAKFINDER8, "min_res", float, 0, 1e5, 10),
    (PEAKFINDER8, "max_res", float, 0, 1e5, 10),
    (CRYSTALLOGRAPHY, "min_num_peaks_for_hit", int, 0, 1_000_000, 1),
    (CRYSTALLOGRAPHY, "max_num_peaks_for_hit", int, 0, 1_000_000, 10),
)
# Changing these needs new peakfinder8 tables; the others are set on the same instance.
_REBUILD_KEYS = ("local_bg_radius", "min_res", "max_res")


def default_output(config: str | pathlib.Path) -> pathlib.Path:
    """Where "Write monitor.yaml" writes: ``NAME_tweaked.yaml`` beside ``config`` (so its
    relative paths still resolve)."""
    config = pathlib.Path(config)
    return config.with_name(f"{config.stem}_tweaked{config.suffix or '.yaml'}")


class ParameterTweaker(FrameViewer):
    """The parameter tweaker's main window.

    Args:
        url: the monitor's data broadcast URL.
        config: the monitor's ``monitor.yaml``.
        output: where to write the tuned copy (default: :func:`default_output`).
        buffer_size, refresh_rate, stale_after: as for the frame viewer.

    Raises:
        OmConfigurationError: when the configuration, its geometry or bad pixel map cannot be
            read.
    """

    def __init__(self, url: str, config: str | pathlib.Path, *,
                 output: str | pathlib.Path | None = None,
                 buffer_size: int = DEFAULT_BUFFER_SIZE,
                 refresh_rate: float = DEFAULT_REFRESH_RATE,
                 stale_after: float = DEFAULT_STALE_AFTER,
                 parent: QtWidgets.QWidget | None = None) -> None:
        self.config = pathlib.Path(config)
        self.output = pathlib.Path(output) if output else default_output(self.config)
        parameters = MonitorParameters(self.config)
        parameters.validate(CrystallographyProcessing.parameter_groups, complete=False)
        self._geometry, self._bad_pixel_map = CrystallographyProcessing(
            parameters=parameters).peakfinder8_inputs()
        self.values: dict[tuple[str, str], Any] = {
            (group, key): parameters.get(group, key) for group, key, *_ in TUNED}
        self._max_num_peaks = parameters.get(PEAKFINDER8, "max_num_peaks")
        self._finder = self._build_finder()
        self.peak_list: PeakList = PeakList.empty()
        """The peaks of the frame on screen with the parameters on screen."""
        self.last_redraw_seconds: float | None = None
        """How long the last parameter change took to redraw (peaks found and drawn), s."""
        self._assembled: dict[int, np.ndarray] = {}
        super().__init__(url, buffer_size=buffer_size, refresh_rate=refresh_rate,
                         stale_after=stale_after, parent=parent, tag=ONDAFRAMEDATA_TAG)
        self.setWindowTitle(f"om parameter tweaker — {url} — {self.config}")
        self.spin_boxes = {}
        form = QtWidgets.QFormLayout()
        for group, key, kind, low, high, step in TUNED:
            box = QtWidgets.QDoubleSpinBox() if kind is float else QtWidgets.QSpinBox()
            if kind is float:
                box.setDecimals(2)
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setValue(self.values[(group, key)])
            box.setKeyboardTracking(False)  # retune on Enter or arrows, not on each digit
            box.valueChanged.connect(lambda value, k=(group, key): self.set_value(k, value))
            self.spin_boxes[key] = box
            form.addRow(key, box)
        self.write_button = QtWidgets.QPushButton("Write monitor.yaml")
        self.write_button.setToolTip(f"write a copy of {self.config} with these values to "
                                     f"{self.output}")
        self.write_button.clicked.connect(self.write_configuration)
        panel = QtWidgets.QWidget()
        panel_layout = QtWidgets.QVBoxLayout(panel)
        panel_layout.addLayout(form)
        panel_layout.addWidget(self.write_button)
        panel_layout.addStretch(1)
        dock = QtWidgets.QDockWidget("peakfinder8", self)
        dock.setFeatures(QtWidgets.QDockWidget.NoDockWidgetFeatures)
        dock.setWidget(panel)
        self.addDockWidget(0x2, dock)  # Qt.RightDockWidgetArea
        self.resize(1250, 950)

    # -- peakfinder8 ----------------------------------------------------------------------------

    def _peakfinder8_value(self, key: str) -> Any:
        if key == "max_num_peaks":
            return self._max_num_peaks
        return self.values[(PEAKFINDER8, key)]

    def _build_finder(self):
        return build_peakfinder8(self._geometry, self._bad_pixel_map, self._peakfinder8_value)

    def set_value(self, key: tuple[str, str], value: Any) -> None:
        """Sets one parameter and redraws the peaks of the frame on screen (the time it took
        is ``last_redraw_seconds``). A value peakfinder8 refuses (e.g. ``max_pixel_count``
        below ``min_pixel_count``) is shown in the status bar and not used."""
        start = time.perf_counter()
        previous = self.values[key]
        self.values[key] = type(previous)(value) if previous is not None else value
        try:
            if key[1] in _REBUILD_KEYS:
                self._finder = self._build_finder()
            elif key[0] == PEAKFINDER8:
                self._finder.set_thresholds(**{
                    name: self._peakfinder8_value(name) for name in (
                        "adc_threshold", "minimum_snr", "min_pixel_count", "max_pixel_count",
                        "max_num_peaks")})
        except Exception as error:  # OmConfigurationError: out of range
            self.values[key] = previous
            self.statusBar().showMessage(f"{key[1]} = {value} refused: {error}", 10_000)
            return
        if self.current is not None:
            self._show(self.current)
            QtWidgets.QApplication.processEvents()  # drawn, not only scheduled
        self.last_redraw_seconds = time.perf_counter() - start

    # -- drawing --------------------------------------------------------------------------------

    def _show(self, message: ReceivedMessage) -> None:
        data = message.data
        slab = np.asarray(data["detector_data"], dtype=np.float32)
        if id(message) not in self._assembled:
            if len(self._assembled) > self.buffer.maxlen:
                alive = {id(m) for m in self.buffer}
                self._assembled = {k: v for k, v in self._assembled.items() if k in alive}
            self._assembled[id(message)] = assemble(slab, self._geometry)
        frame = self._assembled[id(message)]
        self.image.setImage(frame, autoLevels=False)
        self.levels.apply(frame)
        self.peak_list = self._finder.find_peaks(slab)
        col, row = slab_to_assembled(self.peak_list.fs, self.peak_list.ss, self._geometry)
        finite = np.isfinite(col) & np.isfinite(row)
        self.peaks.setData(x=col[finite] + PIXEL_CENTRE_OFFSET,
                                y=row[finite] + PIXEL_CENTRE_OFFSET)
        self.current = message
        self._update_controls()

    def _info_text(self, data: dict) -> str:
        count = len(self.peak_list)
        hit = hit_decision(count, self.values[(CRYSTALLOGRAPHY, "min_num_peaks_for_hit")],
                     self.values[(CRYSTALLOGRAPHY, "max_num_peaks_for_hit")])
        return (f"event {data['event_id']}   |   {count} peaks: {'HIT' if hit else 'no hit'}"
                f"   |   monitor: {len(data['peak_list']['fs'])} peaks, "
                f"{'hit' if data['frame_is_hit'] else 'no hit'}")

    # -- writing --------------------------------------------------------------------------------

    def write_configuration(self) -> pathlib.Path | None:
        """Writes the copy of ``monitor.yaml`` with the values on screen and prints (and shows)
        the command that restarts the monitor with it. Returns its path (None on failure)."""
        try:
            path = write_configuration_copy(self.config, self.output, self.values)
        except Exception as error:  # OmConfigurationError: cannot write
            self.statusBar().showMessage(str(error), 20_000)
            return None
        command = f"mpiexec -n RANKS om_monitor.py SOURCE -c {path}"
        print(f"wrote {path}; restart the monitor with: {command}", flush=True)
        self.statusBar().showMessage(f"wrote {path}; restart: {command}", 60_000)
        return path


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``om_crystallography_parameter_tweaker.py``."""
    parser = argparse.ArgumentParser(
        prog="om_crystallography_parameter_tweaker.py",
        description="Tunes peakfinder8 on the frames an om monitor sends (ondaframedata): "
        "om's peakfinder8 with the parameters on the screen, and a copy of monitor.yaml "
        "with them.",
    )
    add_common_arguments(parser)
    parser.add_argument("-c", "--config", default="monitor.yaml",
                        help="the monitor's configuration (default monitor.yaml)")
    parser.add_argument("--output", type=pathlib.Path, metavar="PATH",
                        help="where to write the tuned copy (default NAME_tweaked.yaml beside "
                        "the configuration)")
    parser.add_argument("--buffer", type=positive_int_type, default=DEFAULT_BUFFER_SIZE,
                        metavar="N",
                        help=f"how many of the latest frames Back / Forward go through "
                        f"(default {DEFAULT_BUFFER_SIZE})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``om_crystallography_parameter_tweaker.py``."""
    args = build_parser().parse_args(argv)
    return run_gui(
        lambda options: ParameterTweaker(
            options.url, options.config, output=options.output, buffer_size=options.buffer,
            refresh_rate=options.refresh_rate, stale_after=options.stale_after),
        args,
        "om_crystallography_parameter_tweaker.py",
    )


if __name__ == "__main__":
    sys.exit(main())
