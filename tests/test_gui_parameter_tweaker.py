# SPDX-License-Identifier: GPL-3.0-or-later
"""The parameter tweaker fed by the real monitor (``mpiexec -n 3 om_monitor.py``) on the real
JUNGFRAU frames: offscreen Qt, real ZeroMQ on 127.0.0.1, every wait bounded.

It shows: with the monitor's parameters its peaks are exactly the monitor's; changing
minimum_snr changes the peaks drawn; the monitor.yaml it writes keeps the comments, loads, and
starts the monitor, whose peaks are then the tweaker's with the new values.
"""

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from om.graphical_interfaces.common import PEAK_COLOR  # noqa: E402
from om.graphical_interfaces.parameter_tweaker import ParameterTweaker  # noqa: E402
from om.lib.parameters import MonitorParameters  # noqa: E402
from om.processing_layer.crystallography import CrystallographyProcessing  # noqa: E402

from gui_helpers import count_color, grab, region, window_factory  # noqa: E402
from helpers import Process, configure, free_port, monitor_command, simulator_command  # noqa: E402

pytestmark = pytest.mark.slow

make_tweaker = window_factory(ParameterTweaker, "make_tweaker")
START_MS = 240_000  # the monitor's start-up (numba caches, MPI) on a busy 2-core machine


def _start(tmp_path, config, real_module_file, name):
    urls = f"tcp://127.0.0.1:{free_port()},tcp://127.0.0.1:{free_port()}"
    simulator = Process(simulator_command(urls, "--file", str(real_module_file), "--rate", "4"),
                        tmp_path, f"simulator-{name}")
    monitor = Process(monitor_command(urls, config), tmp_path, f"monitor-{name}")
    return simulator, monitor


def _stop(simulator, monitor):
    code = monitor.stop()
    simulator.stop()
    print(monitor.stdout[-2000:], monitor.stderr[-3000:])
    return code


def _monitor_peaks(tweaker):
    peaks = tweaker.current.data["peak_list"]
    return peaks["fs"], peaks["ss"], peaks["intensity"]


def _assert_same_peaks(tweaker):
    fs, ss, intensity = _monitor_peaks(tweaker)
    assert len(fs) > 0
    np.testing.assert_array_equal(tweaker.peak_list.fs, fs)
    np.testing.assert_array_equal(tweaker.peak_list.ss, ss)
    np.testing.assert_array_equal(tweaker.peak_list.intensity, intensity)


def test_tweaker_on_the_real_monitor(qtbot, tmp_path, real_module_file, geometry_1m,
                                     real_calibration, make_tweaker):
    config, broadcast = configure(tmp_path, geometry_1m, *real_calibration)
    simulator, monitor = _start(tmp_path, config, real_module_file, "first")
    try:
        tweaker = make_tweaker(broadcast, config=config)
        qtbot.waitUntil(lambda: tweaker.has_data or monitor.popen.poll() is not None,
                        timeout=START_MS)
        assert tweaker.has_data, monitor.stderr[-3000:]
        tweaker.set_paused(True)  # the frame under test stays on screen
    finally:
        assert _stop(simulator, monitor) == 0

    # The monitor's parameters: the monitor's peaks, exactly.
    _assert_same_peaks(tweaker)
    image = region(grab(tweaker), tweaker, tweaker.image_widget)
    circles_before = count_color(image, PEAK_COLOR, tolerance=30)
    drawn_before = len(tweaker.peaks.data)
    assert drawn_before == len(tweaker.peak_list) > 100

    # A stricter minimum_snr: fewer peaks drawn, in the list and on the screen.
    tweaker.spin_boxes["minimum_snr"].setValue(12.0)
    qtbot.waitUntil(lambda: len(tweaker.peaks.data) != drawn_before, timeout=10_000)
    image = region(grab(tweaker), tweaker, tweaker.image_widget)
    circles_after = count_color(image, PEAK_COLOR, tolerance=30)
    print(f"peaks drawn: {drawn_before} -> {len(tweaker.peaks.data)}; cyan pixels "
          f"{circles_before} -> {circles_after}; redraw took "
          f"{tweaker.last_redraw_seconds:.3f} s")
    assert 0 < len(tweaker.peaks.data) < drawn_before
    assert circles_after < circles_before
    for key, value in (("min_res", 50.0), ("max_res", 2000.0), ("local_bg_radius", 3)):
        tweaker.spin_boxes[key].setValue(value)  # these rebuild peakfinder8's tables
        print(f"{key} -> {value}: {len(tweaker.peak_list)} peaks, redraw took "
              f"{tweaker.last_redraw_seconds:.3f} s")
    assert tweaker.values[("peakfinder8_peak_detection", "minimum_snr")] == 12.0
    # A value peakfinder8 refuses is not used.
    tweaker.spin_boxes["max_pixel_count"].setValue(1)
    assert tweaker.values[("peakfinder8_peak_detection", "max_pixel_count")] == 150

    # The copy of monitor.yaml: comments kept, the values set, valid.
    written = tweaker.write_configuration()
    assert written == tmp_path / "monitor_tweaked.yaml"
    text = written.read_text()
    assert "# Live frames for CrystFEL's indexamajig" in text
    parameters = MonitorParameters(written)
    parameters.validate(CrystallographyProcessing.parameter_groups, complete=False)
    assert parameters.get("peakfinder8_peak_detection", "minimum_snr") == 12.0
    assert parameters.get("peakfinder8_peak_detection", "local_bg_radius") == 3

    # The written file starts the monitor, which then finds the tweaker's peaks.
    tweaker.go_live()
    shown = tweaker.num_displayed
    simulator, monitor = _start(tmp_path, written, real_module_file, "second")
    try:
        qtbot.waitUntil(lambda: tweaker.num_displayed > shown or monitor.popen.poll() is not None,
                        timeout=START_MS)
        assert tweaker.num_displayed > shown, monitor.stderr[-3000:]
        tweaker.set_paused(True)
    finally:
        assert _stop(simulator, monitor) == 0
    _assert_same_peaks(tweaker)
