# SPDX-License-Identifier: GPL-3.0-or-later
"""The crystallography GUI fed by a real PUB socket on 127.0.0.1, checked on its pixels.

Offscreen Qt; every wait is qtbot.waitUntil with a timeout. A SUB socket misses what is
published before its subscription reaches the publisher, so the first message of a test is
published again until the GUI shows it; later messages are sent once.
"""

import os
import subprocess
import sys
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PyQt5 import QtCore, QtGui  # noqa: E402

from gui_helpers import context, publisher, router  # noqa: E402, F401 (fixtures)
from gui_helpers import (WAIT_MS, count_color, grab, pub_socket, publish_until,  # noqa: E402
                         region, send_malformed, window_factory)
from om.graphical_interfaces import crystallography_gui, synthetic  # noqa: E402
from om.graphical_interfaces.common import (  # noqa: E402
    HIT_RATE_COLOR,
    RESOLUTION_RING_COLOR,
    resolution_ring_radius,
    save_screenshot,
)
from om.graphical_interfaces.crystallography_gui import CrystallographyGui  # noqa: E402
from om.lib.serialization import pack  # noqa: E402

# -- helpers ---------------------------------------------------------------------------------


make_gui = window_factory(CrystallographyGui, "make_gui")


def omdata(seed=1, **changes):
    content = synthetic.make_omdata(seed)
    content.update(changes)
    return content


# -- tests -----------------------------------------------------------------------------------


def test_shows_real_messages_hit_rate_curve_rings_and_counters(qtbot, publisher, make_gui, tmp_path):
    socket, url = publisher.socket, publisher.url
    gui = make_gui(url)
    before = grab(gui)
    assert count_color(region(before, gui, gui.hit_rate_widget), HIT_RATE_COLOR) == 0
    assert count_color(region(before, gui, gui.powder_widget), RESOLUTION_RING_COLOR) == 0
    assert "waiting for data" in gui.age_label.text()

    content = omdata(num_events=123_456, hit_rate=27.5)
    publish_until(qtbot, socket, synthetic.encode("omdata", content), lambda: gui.has_data)
    qtbot.waitUntil(lambda: "received" in gui.age_label.text(), timeout=WAIT_MS)
    after = grab(gui)

    # The hit rate curve is drawn in its pen colour where there was only background.
    assert count_color(region(after, gui, gui.hit_rate_widget), HIT_RATE_COLOR) > 300
    # The resolution rings are drawn on the powder pattern, and the pattern itself changed.
    powder_after = region(after, gui, gui.powder_widget)
    assert count_color(powder_after, RESOLUTION_RING_COLOR) > 300
    changed = np.any(powder_after != region(before, gui, gui.powder_widget), axis=-1)
    assert changed.mean() > 0.05
    # The peakogram shows something where it showed nothing.
    peakogram_changed = np.any(
        region(after, gui, gui.peakogram_widget) != region(before, gui, gui.peakogram_widget), axis=-1
    )
    assert peakogram_changed.mean() > 0.05

    # The curve is the history against the time before the newest event.
    x, y = gui.hit_rate_curve.getData()
    np.testing.assert_allclose(y, content["hit_rate_history"])
    np.testing.assert_allclose(x, content["hit_rate_timestamp_history"] - content["timestamp"])
    assert x.max() == pytest.approx(0.0) and x.min() < -100
    assert gui.current_hit_rate_line.value() == pytest.approx(27.5)

    # Spots enlarged to 3x3 by default (so that they survive the display's down-sampling).
    powder = content["virtual_powder_plot"]
    shown = gui.powder_image.image
    assert gui.enlarge_spots_checkbox.isChecked()
    np.testing.assert_array_equal(shown, crystallography_gui.enlarge_spots(powder))
    row, col = np.unravel_index(np.argmax(powder), powder.shape)
    assert shown[row - 1 : row + 2, col - 1 : col + 2].min() == pytest.approx(powder.max())
    gui.enlarge_spots_checkbox.setChecked(False)
    np.testing.assert_array_equal(gui.powder_image.image, powder)
    gui.enlarge_spots_checkbox.setChecked(True)
    assert gui.peakogram_image.image.shape == content["peakogram"].shape
    np.testing.assert_allclose(gui.peakogram_image.image, np.log10(1 + content["peakogram"]), rtol=1e-6)
    rect = gui.peakogram_image.mapRectToParent(gui.peakogram_image.boundingRect())
    assert rect.width() == pytest.approx(100 * 5.0) and rect.height() == pytest.approx(150 * 20.0)

    # Rings: one per configured resolution that exists, labelled in Å, with the right radius.
    assert [resolution for resolution, _, _ in gui.resolution_rings.items] == [2.0, 3.0, 4.0, 6.0]
    for resolution, circle, label in gui.resolution_rings.items:
        expected = resolution_ring_radius(
            resolution, content["beam_energy"], content["detector_distance"], content["pixel_size"]
        )
        assert circle.rect().width() / 2 == pytest.approx(expected)
        assert circle.rect().center().x() == pytest.approx(content["beam_center"][0] + 0.5)
        assert circle.rect().center().y() == pytest.approx(content["beam_center"][1] + 0.5)
        assert label.textItem.toPlainText() == f"{resolution:g} Å"

    assert gui.counter_labels["events"].text() == "123,456"
    assert gui.counter_labels["hits"].text() == f"{content['num_hits']:,}"
    assert gui.counter_labels["hit_rate"].text() == "27.50 %"
    assert gui.counter_labels["events_per_second"].text() == "987.6"
    assert "incomplete_frame 3" in gui.problems_label.text()

    # Rings can be hidden.
    gui.rings_checkbox.setChecked(False)
    hidden = grab(gui)
    assert count_color(region(hidden, gui, gui.powder_widget), RESOLUTION_RING_COLOR) == 0

    path = save_screenshot(gui, tmp_path / "shots" / "crystallography.png")
    saved = QtGui.QImage(str(path))
    assert not saved.isNull() and saved.width() == gui.width() and saved.height() == gui.height()


def test_status_names_lost_processing_ranks_and_restarts(qtbot, publisher, make_gui):
    gui = make_gui(publisher.url)
    content = omdata(processing_ranks_lost={"2": "its process (pid 77) ended"},
                     monitor_restarts=3)
    content["problems"] = {"processing_rank_lost": 1}
    publish_until(qtbot, publisher.socket, synthetic.encode("omdata", content),
                  lambda: "lost" in gui.problems_label.text())
    assert gui.problems_label.text() == (
        "monitor problems: processing_rank_lost 1; processing rank 2 lost (its process (pid 77) "
        "ended); monitor restarted 3 times")


def test_malformed_messages_are_skipped_and_counted(qtbot, publisher, make_gui):
    socket, url = publisher.socket, publisher.url
    gui = make_gui(url)
    publish_until(qtbot, socket, synthetic.encode("omdata", omdata(num_events=1)), lambda: gui.has_data)

    good = omdata()
    missing = {key: value for key, value in good.items() if key != "peakogram"}
    bad_messages = [
        [b"omdata"],  # one part
        [b"omdata", b"\xc1 this is not msgpack"],  # garbage payload
        [b"omdata", pack(missing)],  # a key missing
        [b"omdata", pack({**good, "virtual_powder_plot": np.zeros((4, 4, 4), np.float32)})],  # shape
        [b"omdata", pack({**good, "hit_rate_history": good["hit_rate_history"][:-5]})],  # lengths
        [b"omdata", pack({**good, "virtual_powder_plot": good["virtual_powder_plot"][:2].astype("U1")})],
    ]
    assert send_malformed(qtbot, socket, bad_messages, gui.subscriber) == {
        "wrong_number_of_parts": 1,
        "bad_payload": 1,
        "missing_key": 1,
        "bad_value": 3,
    }
    assert gui.counter_labels["events"].text() == "1"  # still the good message
    qtbot.waitUntil(lambda: gui.malformed_label.text() == "malformed messages: 6", timeout=WAIT_MS)
    assert "missing_key: 1" in gui.malformed_label.toolTip()

    socket.send_multipart(synthetic.encode("omdata", omdata(num_events=777)))
    qtbot.waitUntil(lambda: gui.counter_labels["events"].text() == "777", timeout=WAIT_MS)
    assert gui.num_display_errors == 0


def test_reconnects_when_the_monitor_restarts(qtbot, context, publisher, make_gui):
    socket, url, port = publisher.socket, publisher.url, publisher.port
    gui = make_gui(url)
    publish_until(qtbot, socket, synthetic.encode("omdata", omdata(num_events=1)), lambda: gui.has_data)
    socket.close(linger=0)

    restarted = pub_socket(context)
    parts = synthetic.encode("omdata", omdata(2, num_events=42, hit_rate=55.0))
    started = time.monotonic()
    try:
        publish_until(
            qtbot, restarted, parts, lambda: gui.counter_labels["events"].text() == "42", bind_port=port
        )
        assert time.monotonic() - started < 5
        assert gui.counter_labels["hit_rate"].text() == "55.00 %"
    finally:
        restarted.close(linger=0)


def test_no_data_for_n_seconds_when_the_monitor_is_silent(qtbot, publisher, make_gui):
    socket, url = publisher.socket, publisher.url
    gui = make_gui(url, stale_after=0.3)
    publish_until(qtbot, socket, synthetic.encode("omdata", omdata()), lambda: gui.has_data)
    qtbot.waitUntil(lambda: gui.age_label.text().startswith("no data for"), timeout=WAIT_MS)


def click_reset_and_answer(qtbot, gui, router_socket, reply):
    """Clicks "Reset plots", receives the request on the ROUTER and answers ``reply``."""
    qtbot.mouseClick(gui.reset_button, QtCore.Qt.LeftButton)
    qtbot.waitUntil(lambda: router_socket.poll(0) != 0, timeout=WAIT_MS)
    identity, empty, request = router_socket.recv_multipart()
    assert request == b"resetplots"
    if reply is not None:
        router_socket.send_multipart([identity, empty, reply])
    return identity


def test_reset_button_uses_the_announced_responding_url(qtbot, publisher, router, make_gui):
    socket, url = publisher.socket, publisher.url
    router_socket, router_url = router
    gui = make_gui(url)
    qtbot.mouseClick(gui.reset_button, QtCore.Qt.LeftButton)  # nowhere to send it yet
    assert "no responding URL" in gui.statusBar().currentMessage()

    parts = synthetic.encode("omdata", omdata(responding_url=router_url))
    publish_until(qtbot, socket, parts, lambda: gui.has_data)
    assert gui.responding_url == router_url

    click_reset_and_answer(qtbot, gui, router_socket, b"ok: plots reset")
    qtbot.waitUntil(lambda: "ok: plots reset" in gui.statusBar().currentMessage(), timeout=WAIT_MS)
    assert gui.last_request_result.ok
    assert gui.reset_button.isEnabled()

    click_reset_and_answer(qtbot, gui, router_socket, b"error: the monitor is busy")
    qtbot.waitUntil(lambda: "refused" in gui.statusBar().currentMessage(), timeout=WAIT_MS)
    assert "error: the monitor is busy" in gui.statusBar().currentMessage()


def test_reset_button_times_out_without_blocking_then_uses_a_fresh_socket(
    qtbot, publisher, router, make_gui
):
    url = publisher.url
    router_socket, router_url = router
    gui = make_gui(url, responding_url=router_url, request_timeout=0.5)

    first_identity = click_reset_and_answer(qtbot, gui, router_socket, None)  # never answered
    assert not gui.reset_button.isEnabled()  # one request at a time
    qtbot.waitUntil(lambda: "no reply" in gui.statusBar().currentMessage(), timeout=WAIT_MS)
    assert gui.reset_button.isEnabled()

    second_identity = click_reset_and_answer(qtbot, gui, router_socket, b"ok")
    assert second_identity != first_identity  # a fresh REQ socket
    qtbot.waitUntil(lambda: "monitor replied: ok" in gui.statusBar().currentMessage(), timeout=WAIT_MS)


def test_console_entry_saves_a_screenshot_and_quits(qtbot, publisher, tmp_path):
    # In a process of its own, as a user starts it (QT_QPA_PLATFORM=offscreen comes from here).
    socket, url = publisher.socket, publisher.url
    path = tmp_path / "gui.png"
    parts = synthetic.encode("omdata", omdata())
    timer = QtCore.QTimer()
    timer.timeout.connect(lambda: socket.send_multipart(parts))
    timer.start(50)
    command = [
        sys.executable,
        "-m",
        "om.graphical_interfaces.crystallography_gui",
        url,
        "--screenshot",
        str(path),
        "--resolution-rings",
        "3,5",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        qtbot.waitUntil(lambda: process.poll() is not None, timeout=60_000)
    finally:
        timer.stop()
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert process.returncode == 0, output
    assert "screenshot saved" in output
    image = QtGui.QImage(str(path))
    assert not image.isNull() and image.width() > 500


def test_main_rejects_a_bad_url(qtbot, capsys):
    assert crystallography_gui.main(["not-a-url"]) == 2
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        crystallography_gui.main(["tcp://127.0.0.1:1", "--refresh-rate", "0"])


def test_shows_the_hit_saving_status(qtbot, publisher, make_gui):
    gui = make_gui(publisher.url)
    status = {"frames_saved": 1234, "files_written": 3, "bytes_written": 5.0e8,
              "bytes_per_second": 2.5e7, "frames_not_saved": 7, "frames_listed": 1200,
              "errors": ["rank 2: saving stopped: disk full"], "directory": "/data"}
    publish_until(qtbot, publisher.socket, synthetic.encode("omdata", omdata(hit_saving=status)),
                  lambda: "saved:" in gui.saving_label.text())
    text = gui.saving_label.text()
    assert "1,234 frames, 3 files, 500.0 MB, 25.0 MB/s" in text
    assert "NOT SAVED: 7 frames; rank 2: saving stopped: disk full" in text
    assert crystallography_gui.describe_hit_saving(None) == ""  # saving off: nothing shown
    assert "malformed" in crystallography_gui.describe_hit_saving({"frames_saved": "x"})
