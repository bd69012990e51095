# SPDX-License-Identifier: GPL-3.0-or-later
"""The radial profile GUI: the sample delivery at a glance.

Start it with ``om_radial_profile_gui.py tcp://monitor-host:12321``. From the monitor's
``omdata`` messages it plots:

- the radial profiles (azimuthally averaged intensity, photons, against the distance from the
  beam, pixels): the newest frame's, and the means of the hits and of the non-hits since the
  monitor started (or "Reset plots"); the watched ring (the monitor's
  ``radial_ring_resolution``, e.g. the solvent ring at 3.0-3.7 A) is shaded;
- the ring's mean intensity per frame against the time before the newest event: a jet that
  stops hitting, ice, or a drifting sample shows there first.
"""

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets

from om.graphical_interfaces.common import (
    DEFAULT_REFRESH_RATE,
    DEFAULT_STALE_AFTER,
    MonitorWindow,
    add_common_arguments,
    resolution_at_radius,
    run_gui,
)
from om.graphical_interfaces.subscriber import OMDATA_TAG, ReceivedMessage, Subscriber

LATEST_COLOR = (200, 200, 200)
HITS_COLOR = (255, 170, 0)
NON_HITS_COLOR = (90, 200, 255)
RING_COLOR = (60, 230, 60)


class RadialProfileGui(MonitorWindow):
    """The radial profile window.

    Args:
        url: the monitor's data broadcast URL.
        refresh_rate: display updates per second (at most).
        stale_after: seconds without data after which the status bar says "no data for N s".
        subscriber: a subscriber to use instead of a new one.
    """

    def __init__(self, url: str, *, refresh_rate: float = DEFAULT_REFRESH_RATE,
                 stale_after: float = DEFAULT_STALE_AFTER, subscriber: Subscriber | None = None,
                 parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(url, OMDATA_TAG, refresh_rate=refresh_rate, stale_after=stale_after,
                         subscriber=subscriber, parent=parent)
        self.setWindowTitle(f"om radial profile — {url}")
        self.profile_widget = pg.PlotWidget(title="Radial profile")
        plot = self.profile_widget.getPlotItem()
        plot.setLabel("bottom", "distance from the beam (px)")
        plot.setLabel("left", "mean intensity (photons)")
        plot.showGrid(x=True, y=True, alpha=0.3)
        plot.addLegend(offset=(-10, 10))
        self.ring_region = pg.LinearRegionItem(movable=False,
                                               brush=pg.mkBrush(*RING_COLOR, 50),
                                               pen=pg.mkPen(RING_COLOR))
        self.ring_region.setVisible(False)
        plot.addItem(self.ring_region, ignoreBounds=True)
        self.latest_curve = plot.plot(pen=pg.mkPen(LATEST_COLOR, width=1), name="newest frame")
        self.hits_curve = plot.plot(pen=pg.mkPen(HITS_COLOR, width=2), name="hits, mean")
        self.non_hits_curve = plot.plot(pen=pg.mkPen(NON_HITS_COLOR, width=2),
                                        name="non-hits, mean")
        self.ring_widget = pg.PlotWidget(title="Mean intensity in the watched ring")
        ring_plot = self.ring_widget.getPlotItem()
        ring_plot.setLabel("bottom", "time before the newest event", units="s")
        ring_plot.setLabel("left", "ring intensity (photons)")
        ring_plot.showGrid(x=True, y=True, alpha=0.3)
        ring_plot.setDownsampling(auto=True, mode="peak")
        ring_plot.setClipToView(True)
        self.ring_curve = ring_plot.plot(pen=pg.mkPen(RING_COLOR, width=2))
        self.info_label = QtWidgets.QLabel("waiting for data…")
        splitter = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        splitter.addWidget(self.profile_widget)
        splitter.addWidget(self.ring_widget)
        splitter.setSizes([600, 300])
        central = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(central)
        layout.addWidget(self.info_label)
        layout.addWidget(splitter, stretch=1)
        self.setCentralWidget(central)
        self.resize(1000, 850)
        self.start()

    def display(self, message: ReceivedMessage) -> None:
        """Shows one ``omdata`` message (one of an older monitor, without profiles, shows
        nothing but says so)."""
        data = message.data
        if "radial_profile_radius" not in data:
            self.info_label.setText("the monitor sends no radial profile (an older om)")
            return
        radius = np.asarray(data["radial_profile_radius"], dtype=np.float64)
        for curve, key in ((self.latest_curve, "radial_profile_latest"),
                           (self.hits_curve, "radial_profile_hits"),
                           (self.non_hits_curve, "radial_profile_non_hits")):
            curve.setData(radius, np.asarray(data[key], dtype=np.float64), connect="finite")
        low, high = data.get("ring_radius", (math.nan, math.nan))
        shown = math.isfinite(low) and math.isfinite(high)
        self.ring_region.setVisible(shown)
        if shown:
            self.ring_region.setRegion((low, high))
        if "ring_intensity_history" in data:
            times = np.asarray(data["ring_intensity_timestamp_history"], dtype=np.float64)
            self.ring_curve.setData(times - data["timestamp"],
                                    np.asarray(data["ring_intensity_history"]), connect="finite")
        self.info_label.setText(self._info_text(data, low, high))

    @staticmethod
    def _info_text(data: dict, low: float, high: float) -> str:
        geometry = (data["beam_energy"], data["detector_distance"], data["pixel_size"])
        resolutions = [resolution_at_radius(r, *geometry) if math.isfinite(r) else None
                       for r in (low, high)]
        ring = (f"ring {low:.0f}-{high:.0f} px"
                + (f" ({resolutions[1]:.2f}-{resolutions[0]:.2f} Å)"
                   if None not in resolutions else "")) if math.isfinite(low) else "no ring"
        return (f"hits averaged: {data.get('radial_profile_num_hits', 0)}   |   non-hits "
                f"averaged: {data.get('radial_profile_num_non_hits', 0)}   |   {ring}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``om_radial_profile_gui.py``."""
    parser = argparse.ArgumentParser(
        prog="om_radial_profile_gui.py",
        description="Shows the radial profiles and the watched ring's intensity an om monitor "
        "broadcasts (omdata messages).")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``om_radial_profile_gui.py``."""
    args = build_parser().parse_args(argv)
    return run_gui(
        lambda options: RadialProfileGui(options.url, refresh_rate=options.refresh_rate,
                                         stale_after=options.stale_after),
        args, "om_radial_profile_gui.py")


if __name__ == "__main__":
    sys.exit(main())
