# SPDX-License-Identifier: GPL-3.0-or-later
"""GUIs on a workstation that lacks the X11 libraries of Qt's xcb plugin: one line naming them
and the packages, exit code 2, not Qt's abort. The system's packages are never touched: the
check is pointed (OM_QT_XCB_PLUGIN) at a plugin built here against a library then removed."""

import os
import shutil
import subprocess
import sys

import pytest

from om.graphical_interfaces.qt_platform import install_hint, missing_libraries, xcb_problem

GUIS = ("frame_viewer", "crystallography_gui", "parameter_tweaker", "radial_profile_gui")


@pytest.fixture
def plugin_with_missing_library(tmp_path):
    """A ``libqxcb.so`` needing ``libomtest-missing.so.4`` (built, linked, then deleted) and
    ``libxcb-icccm.so.4`` (a stand-in built here, found through the plugin's rpath)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which("ldd") is None:
        pytest.skip("needs a C compiler and ldd to build the test plugin")
    source = tmp_path / "empty.c"
    source.write_text("int om_test_symbol(void) { return 0; }\n")
    libraries = tmp_path / "lib"
    libraries.mkdir()
    for soname in ("libomtest-missing.so.4", "libxcb-icccm.so.4"):
        subprocess.run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o",
                        str(libraries / soname), str(source)], check=True, timeout=60)
        os.symlink(soname, libraries / (soname.split(".so")[0] + ".so"))
    plugin = tmp_path / "libqxcb.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(plugin), str(source),
                    f"-L{libraries}", "-Wl,--no-as-needed", "-lomtest-missing", "-lxcb-icccm",
                    f"-Wl,-rpath,{libraries}"], check=True, timeout=60)
    assert missing_libraries(plugin) == []  # every dependency there
    (libraries / "libomtest-missing.so.4").unlink()
    return plugin


def test_the_check_names_the_missing_library(plugin_with_missing_library, monkeypatch):
    assert missing_libraries(plugin_with_missing_library) == ["libomtest-missing.so.4"]
    monkeypatch.setenv("OM_QT_XCB_PLUGIN", str(plugin_with_missing_library))
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    problem = xcb_problem()
    assert problem is not None and "libomtest-missing.so.4" in problem
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # another platform: not checked
    assert xcb_problem() is None


def test_packages_of_the_libraries_a_fresh_debian_lacks():
    hint = install_hint(["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb-xinerama.so.0"])
    assert hint == ("on Debian/Ubuntu: apt-get install libxcb-icccm4 libxcb-keysyms1 "
                    "libxcb-xinerama0; on RHEL/Fedora: dnf install xcb-util-wm "
                    "xcb-util-keysyms libxcb")
    assert "apt-file search" in install_hint(["libnew.so.1"])


def test_every_gui_prints_one_line_and_stops(plugin_with_missing_library, tmp_path):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    environment.update(DISPLAY=":99", OM_QT_XCB_PLUGIN=str(plugin_with_missing_library))
    for module in GUIS:
        done = subprocess.run([sys.executable, "-m", f"om.graphical_interfaces.{module}",
                               "tcp://127.0.0.1:1"], env=environment, capture_output=True,
                              text=True, timeout=120, check=False, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1, lines
        assert "cannot load: the system lacks libomtest-missing.so.4" in lines[0], lines
