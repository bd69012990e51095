# SPDX-License-Identifier: GPL-3.0-or-later
"""The GUI parts that watch the sample, fed by a real PUB socket on 127.0.0.1 and checked on
their pixels (offscreen Qt): the saturation rate beside the hit rate (red above the alarm),
saturated peaks marked in the frame viewer, and the radial profile GUI."""

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402

from gui_helpers import context, publisher  # noqa: E402, F401 (fixtures)
from gui_helpers import WAIT_MS, count_color, grab, publish_until, region, window_factory  # noqa: E402
from om.graphical_interfaces import synthetic  # noqa: E402
from om.graphical_interfaces.common import (  # noqa: E402
    SATURATED_PEAK_COLOR,
    SATURATION_ALARM_COLOR,
    SATURATION_RATE_COLOR,
)
from om.graphical_interfaces.crystallography_gui import CrystallographyGui  # noqa: E402
from om.graphical_interfaces.frame_viewer import FrameViewer  # noqa: E402
from om.graphical_interfaces.radial_profile_gui import (  # noqa: E402
    HITS_COLOR,
    NON_HITS_COLOR,
    RING_COLOR,
    RadialProfileGui,
)

make_gui = window_factory(CrystallographyGui, "make_gui")
make_viewer = window_factory(FrameViewer, "make_viewer")
make_profile_gui = window_factory(RadialProfileGui, "make_profile_gui")


def _omdata(seed, saturation, alarm=5.0):
    content = synthetic.make_omdata(seed)
    n = len(content["hit_rate_history"])
    radius = (np.arange(400) + 0.5) * 2.0
    solvent = 1.0 + 3.0 * np.exp(-0.5 * ((radius - 330.0) / 30.0) ** 2)
    content.update(
        saturation_rate_history=np.full(n, saturation), saturation_rate=saturation,
        saturation_rate_alarm=alarm, num_saturated_frames=7,
        radial_profile_radius=radius,
        radial_profile_latest=solvent.astype(np.float32),
        radial_profile_hits=(solvent * 1.5).astype(np.float32),
        radial_profile_non_hits=(solvent * 0.5).astype(np.float32),
        radial_profile_num_hits=12, radial_profile_num_non_hits=30,
        ring_intensity_timestamp_history=content["hit_rate_timestamp_history"],
        ring_intensity_history=np.linspace(3.0, 4.0, n),
        ring_radius=[278.0, 348.0])
    return content


def test_saturation_rate_beside_the_hit_rate_red_above_the_alarm(qtbot, publisher, make_gui):
    socket, url = publisher.socket, publisher.url
    gui = make_gui(url)
    publish_until(qtbot, socket, synthetic.encode("omdata", _omdata(1, 2.0)),
                  lambda: gui.has_data)
    plot = region(grab(gui), gui, gui.hit_rate_widget)
    assert count_color(plot, SATURATION_RATE_COLOR) > 300
    assert count_color(plot, SATURATION_ALARM_COLOR) == 0
    assert not gui.saturation_alarm and gui.counter_labels["saturation_rate"].text() == "2.0 %"

    # Until the 12 % message is shown (not a redraw of the first one, on a busy machine).
    publish_until(qtbot, socket, synthetic.encode("omdata", _omdata(2, 12.0)),
                  lambda: gui.counter_labels["saturation_rate"].text() == "12.0 %")
    plot = region(grab(gui), gui, gui.hit_rate_widget)
    assert count_color(plot, SATURATION_ALARM_COLOR) > 300
    assert gui.saturation_alarm


def test_peaks_with_saturated_pixels_are_marked(qtbot, publisher, make_viewer):
    socket, url = publisher.socket, publisher.url
    viewer = make_viewer(url, peak_circle_size=20.0)
    content = synthetic.make_omframedata(1, event_id="e1", num_peaks=50)
    saturated = np.zeros(50, dtype=np.int32)
    saturated[:5] = 3
    content.update(peak_list_saturated_pixels=saturated, num_saturated_pixels=15)
    publish_until(qtbot, socket, synthetic.encode("omframedata", content),
                  lambda: viewer.has_data)
    image = region(grab(viewer), viewer, viewer.image_widget)
    assert count_color(image, SATURATED_PEAK_COLOR, tolerance=30) > 100
    x, _ = viewer.saturated_peaks.getData()
    assert len(x) == 5


def test_radial_profile_gui(qtbot, publisher, make_profile_gui):
    socket, url = publisher.socket, publisher.url
    gui = make_profile_gui(url)
    before = region(grab(gui), gui, gui.profile_widget)  # the legend's sample lines only
    content = _omdata(1, 2.0)
    publish_until(qtbot, socket, synthetic.encode("omdata", content), lambda: gui.has_data)
    after = grab(gui)
    profile = region(after, gui, gui.profile_widget)
    for color in (HITS_COLOR, NON_HITS_COLOR):
        assert count_color(profile, color) > count_color(before, color) + 200
    assert count_color(region(after, gui, gui.ring_widget), RING_COLOR) > 200
    assert gui.ring_region.isVisible() and gui.ring_region.getRegion() == (278.0, 348.0)
    x, y = gui.hits_curve.getData()
    np.testing.assert_allclose(y, content["radial_profile_hits"], rtol=1e-6)
    assert "hits averaged: 12" in gui.info_label.text()
    assert "3.0" in gui.info_label.text() or "Å" in gui.info_label.text()
