# SPDX-License-Identifier: GPL-3.0-or-later
"""The frame viewer fed by a real PUB socket on 127.0.0.1, checked on its pixels.

Offscreen Qt; every wait is qtbot.waitUntil with a timeout. The first message of a test is
published again until the viewer shows it (a SUB socket misses what is published before its
subscription reaches the publisher); later messages are sent once.
"""

import os
import re

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PyQt5 import QtCore, QtGui  # noqa: E402

from gui_helpers import context, publisher  # noqa: E402, F401 (fixtures)
from gui_helpers import (WAIT_MS, grab, near_color, pub_socket, publish_until,  # noqa: E402
                         region, send_malformed, window_factory)
from om.graphical_interfaces import frame_viewer, synthetic  # noqa: E402
from om.graphical_interfaces.common import PEAK_COLOR, save_screenshot  # noqa: E402
from om.graphical_interfaces.frame_viewer import FrameViewer  # noqa: E402
from om.lib.serialization import pack  # noqa: E402

# -- helpers ---------------------------------------------------------------------------------


make_viewer = window_factory(FrameViewer, "make_viewer")


def window_position(viewer, x, y):
    """Where the image point (x, y) (plot coordinates) is in a grab of the window (integers)."""
    scene_point = viewer.image_plot.vb.mapViewToScene(QtCore.QPointF(x, y))
    view_point = viewer.image_widget.mapFromScene(scene_point)
    window_point = viewer.image_widget.mapTo(viewer, view_point)
    return window_point.x(), window_point.y()


def frame(event_id, seed=1, num_peaks=200, **changes):
    content = synthetic.make_omframedata(seed, event_id=event_id, num_peaks=num_peaks)
    content.update(changes)
    return content


def shown_event(viewer):
    return None if viewer.current is None else viewer.current.data["event_id"]


# -- tests -----------------------------------------------------------------------------------


def test_shows_the_frame_with_its_peaks_circled(qtbot, publisher, make_viewer, tmp_path):
    socket, url = publisher.socket, publisher.url
    viewer = make_viewer(url, peak_circle_size=20.0)
    viewer.resize(1200, 1200)
    before = grab(viewer)
    assert not near_color(region(before, viewer, viewer.image_widget), PEAK_COLOR).any()

    content = frame("run0042/event_000123")
    publish_until(qtbot, socket, synthetic.encode("omframedata", content), lambda: viewer.has_data)
    after = grab(viewer)

    # Circles in the peak colour appear where there were none.
    assert near_color(region(after, viewer, viewer.image_widget), PEAK_COLOR).sum() > 2000
    # Every circle is where its peak is: the peak colour on the circle, not at its centre.
    x, y = content["peak_list_x_in_frame"], content["peak_list_y_in_frame"]
    assert x.size == 200
    on_circle, hollow = 0, 0
    for col, row in zip(x[:40], y[:40]):
        cx, cy = window_position(viewer, col + 0.5, row + 0.5)
        ex, ey = window_position(viewer, col + 0.5 + 10.0, row + 0.5)  # radius: 20 / 2
        rim = after[ey - 2 : ey + 3, ex - 2 : ex + 3]
        centre = after[cy, cx]
        on_circle += bool(near_color(rim, PEAK_COLOR).any())
        hollow += not bool(near_color(centre[None, None, :], PEAK_COLOR).any())
    assert on_circle >= 38 and hollow >= 38

    data = viewer.current.data
    np.testing.assert_array_equal(viewer.image.image, content["frame_data"])
    px, py = viewer.peaks.getData()
    np.testing.assert_allclose(px, x + 0.5)
    np.testing.assert_allclose(py, y + 0.5)
    assert data["num_peaks"] == 200
    text = viewer.info_label.text()
    assert "run0042/event_000123" in text and "HIT" in text and "200 peaks" in text
    # The frame was published until seen: it may have been received more than once.
    assert re.fullmatch(r"frame (\d+)/\1 \(live\)", viewer.position_label.text())

    # Contrast: automatic levels ignore the NaN gaps; dragging the levels turns them off.
    low, high = viewer.histogram.getLevels()
    assert np.isfinite(low) and np.isfinite(high) and high > low
    assert viewer.auto_levels_checkbox.isChecked()
    viewer.histogram.region.setRegion((0.0, 5.0))
    viewer.histogram.region.sigRegionChangeFinished.emit(viewer.histogram.region)
    assert not viewer.auto_levels_checkbox.isChecked()
    assert viewer.histogram.getLevels() == pytest.approx((0.0, 5.0))

    # Peaks can be hidden.
    viewer.peaks_checkbox.setChecked(False)
    assert not near_color(region(grab(viewer), viewer, viewer.image_widget), PEAK_COLOR).any()

    path = save_screenshot(viewer, tmp_path / "frame_viewer.png")
    assert not QtGui.QImage(str(path)).isNull()


def test_back_forward_pause_and_live(qtbot, publisher, make_viewer):
    socket, url = publisher.socket, publisher.url
    viewer = make_viewer(url, buffer_size=3)

    def send(event_id, seed):
        socket.send_multipart(synthetic.encode("omframedata", frame(event_id, seed, num_peaks=seed)))

    # Warm-up frames, maybe shown more than once (published until seen); then one of each.
    publish_until(
        qtbot,
        socket,
        synthetic.encode("omframedata", frame("warm-up", 9, num_peaks=9)),
        lambda: shown_event(viewer) == "warm-up",
    )
    for number in (0, 1, 2):
        send(f"ev-{number}", 10 + number)
        qtbot.waitUntil(lambda n=number: shown_event(viewer) == f"ev-{n}", timeout=WAIT_MS)
    assert [m.data["event_id"] for m in viewer.buffer] == ["ev-0", "ev-1", "ev-2"]
    assert viewer.position_label.text() == "frame 3/3 (live)"
    assert not viewer.forward_button.isEnabled()

    qtbot.mouseClick(viewer.back_button, QtCore.Qt.LeftButton)
    assert shown_event(viewer) == "ev-1" and viewer.paused and viewer.pause_button.isChecked()
    assert "11 peaks" in viewer.info_label.text()
    np.testing.assert_array_equal(viewer.image.image, viewer.buffer[1].data["frame_data"])
    qtbot.mouseClick(viewer.back_button, QtCore.Qt.LeftButton)
    assert shown_event(viewer) == "ev-0"
    assert not viewer.back_button.isEnabled()
    viewer.back()  # at the oldest frame: stays
    assert shown_event(viewer) == "ev-0"
    qtbot.mouseClick(viewer.forward_button, QtCore.Qt.LeftButton)
    assert shown_event(viewer) == "ev-1"
    assert viewer.position_label.text() == "frame 2/3 (paused)"

    # Paused: a new frame is counted, not shown, and the buffer is frozen.
    send("ev-3", 13)
    qtbot.waitUntil(lambda: viewer.newer_while_paused == 1, timeout=WAIT_MS)
    assert shown_event(viewer) == "ev-1"
    assert [m.data["event_id"] for m in viewer.buffer] == ["ev-0", "ev-1", "ev-2"]
    assert "1 newer frame" in viewer.position_label.text()

    # Un-pausing shows the newest frame.
    qtbot.mouseClick(viewer.pause_button, QtCore.Qt.LeftButton)
    assert not viewer.paused and shown_event(viewer) == "ev-3"
    assert [m.data["event_id"] for m in viewer.buffer] == ["ev-1", "ev-2", "ev-3"]

    # Pause with the button, then "Live".
    qtbot.mouseClick(viewer.pause_button, QtCore.Qt.LeftButton)
    assert viewer.paused
    send("ev-4", 14)
    qtbot.waitUntil(lambda: viewer.newer_while_paused == 1, timeout=WAIT_MS)
    assert shown_event(viewer) == "ev-3"
    qtbot.mouseClick(viewer.live_button, QtCore.Qt.LeftButton)
    assert not viewer.paused and shown_event(viewer) == "ev-4"
    assert [m.data["event_id"] for m in viewer.buffer] == ["ev-2", "ev-3", "ev-4"]

    # The buffer keeps the last N frames.
    send("ev-5", 15)
    qtbot.waitUntil(lambda: shown_event(viewer) == "ev-5", timeout=WAIT_MS)
    assert [m.data["event_id"] for m in viewer.buffer] == ["ev-3", "ev-4", "ev-5"]
    assert viewer.position_label.text() == "frame 3/3 (live)"

    # Keyboard: Left steps back (and pauses), Right forward, End goes live.
    viewer.activateWindow()
    qtbot.keyClick(viewer, QtCore.Qt.Key_Left)
    assert shown_event(viewer) == "ev-4" and viewer.paused
    qtbot.keyClick(viewer, QtCore.Qt.Key_Right)
    assert shown_event(viewer) == "ev-5" and viewer.paused
    qtbot.keyClick(viewer, QtCore.Qt.Key_End)
    assert not viewer.paused


def test_malformed_frames_are_skipped_and_counted(qtbot, publisher, make_viewer):
    socket, url = publisher.socket, publisher.url
    viewer = make_viewer(url)
    publish_until(
        qtbot, socket, synthetic.encode("omframedata", frame("good-0")), lambda: viewer.has_data
    )
    good = frame("bad")
    bad_messages = [
        [b"omframedata"],
        [b"omframedata", b"\x00garbage", b"extra"],
        [b"omframedata", b"\xc1\xc1\xc1"],
        [b"omframedata", pack({k: v for k, v in good.items() if k != "frame_data"})],
        [b"omframedata", pack({**good, "frame_data": good["frame_data"].ravel()})],
        [b"omframedata", pack({**good, "peak_list_x_in_frame": good["peak_list_x_in_frame"][:3]})],
        [b"omframedata", pack({**good, "frame_data": good["frame_data"][:8, :8].astype(np.complex64)})],
    ]
    assert send_malformed(qtbot, socket, bad_messages, viewer.subscriber) == {
        "wrong_number_of_parts": 2,
        "bad_payload": 1,
        "missing_key": 1,
        "bad_value": 3,
    }
    assert {message.data["event_id"] for message in viewer.buffer} == {"good-0"}

    socket.send_multipart(synthetic.encode("omframedata", frame("good-1", 2)))
    qtbot.waitUntil(lambda: shown_event(viewer) == "good-1", timeout=WAIT_MS)
    assert "good-1" in viewer.info_label.text()
    qtbot.waitUntil(lambda: viewer.malformed_label.text() == "malformed messages: 7", timeout=WAIT_MS)
    assert viewer.num_display_errors == 0


def test_reconnects_when_the_monitor_restarts(qtbot, publisher, make_viewer):
    context, socket, url, port = publisher.context, publisher.socket, publisher.url, publisher.port
    viewer = make_viewer(url)
    publish_until(qtbot, socket, synthetic.encode("omframedata", frame("before")), lambda: viewer.has_data)
    socket.close(linger=0)
    restarted = pub_socket(context)
    parts = synthetic.encode("omframedata", frame("after-restart", 3))
    publish_until(qtbot, restarted, parts, lambda: shown_event(viewer) == "after-restart", bind_port=port)


def test_frames_without_peaks_and_non_hits(qtbot, publisher, make_viewer):
    socket, url = publisher.socket, publisher.url
    viewer = make_viewer(url)
    content = frame(
        "miss",
        num_peaks=0,
        frame_is_hit=False,
        peak_list_x_in_frame=np.zeros(0),
        peak_list_y_in_frame=np.zeros(0),
        peak_list_intensity=np.zeros(0),
    )
    publish_until(qtbot, socket, synthetic.encode("omframedata", content), lambda: viewer.has_data)
    assert "no hit" in viewer.info_label.text() and "0 peaks" in viewer.info_label.text()
    assert len(viewer.peaks.getData()[0]) == 0
    assert viewer.num_display_errors == 0


def test_main_parses_options(qtbot, capsys):
    args = frame_viewer.build_parser().parse_args(["tcp://host:1", "--buffer", "7", "--refresh-rate", "5"])
    assert args.buffer == 7 and args.refresh_rate == 5.0
    with pytest.raises(SystemExit):
        frame_viewer.build_parser().parse_args(["tcp://host:1", "--buffer", "0"])
    assert frame_viewer.main(["bad url"]) == 2
    assert "cannot connect" in capsys.readouterr().err


def test_without_a_display_the_guis_say_so_and_stop():
    """No DISPLAY, WAYLAND_DISPLAY or QT_QPA_PLATFORM: one error line and exit code 2, not
    Qt's abort (exit code 134)."""
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items()
                   if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    for module in ("frame_viewer", "crystallography_gui"):
        done = subprocess.run([sys.executable, "-m", f"om.graphical_interfaces.{module}",
                               "tcp://127.0.0.1:1"], env=environment, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 2, done.stderr
        assert "error: no display (DISPLAY and WAYLAND_DISPLAY are not set)" in done.stderr
