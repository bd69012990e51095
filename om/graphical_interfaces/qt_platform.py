# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether Qt's X11 platform plugin (``xcb``) can load here, and what to install when not.

The PyQt5 wheel brings Qt and its ``platforms/libqxcb.so``, but that plugin needs X11 client
libraries of the system (libxcb-icccm4, libxcb-keysyms1, libxcb-xinerama0, ... on a fresh
Debian). Without them Qt aborts ("Could not load the Qt platform plugin "xcb"") with a message
that names none. Before the application is created, the GUIs ask the dynamic loader (``ldd``,
which follows the plugin's dependencies recursively) which libraries of the plugin are not
found, and print one line naming them with the Debian/Ubuntu and RHEL/Fedora packages.
``OM_QT_XCB_PLUGIN`` points the check at another plugin file (the tests use a plugin built with
a dependency that is missing).
"""

import os
import pathlib
import re
import shutil
import subprocess

#: soname → (Debian/Ubuntu package, RHEL/Fedora package) of the libraries Qt 5's xcb plugin
#: (and its libQt5XcbQpa) load.
PACKAGES = {
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libGL.so.1": ("libgl1", "mesa-libGL"),
    "libEGL.so.1": ("libegl1", "mesa-libEGL"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
}

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


def xcb_plugin() -> pathlib.Path | None:
    """The xcb platform plugin Qt would load: ``OM_QT_XCB_PLUGIN`` when set, else PyQt5's
    ``plugins/platforms/libqxcb.so`` (None when there is none)."""
    override = os.environ.get("OM_QT_XCB_PLUGIN")
    if override:
        return pathlib.Path(override)
    from PyQt5.QtCore import QLibraryInfo  # loads no platform plugin

    plugin = pathlib.Path(QLibraryInfo.location(QLibraryInfo.PluginsPath)) / "platforms" / \
        "libqxcb.so"
    return plugin if plugin.exists() else None


def missing_libraries(plugin: str | os.PathLike) -> list[str]:
    """The sonames of the shared libraries ``plugin`` (or a library it needs) needs and the
    dynamic loader does not find, in ``ldd``'s order, without repeats; ``[]`` when ``ldd`` is
    not there or cannot tell (the plugin then loads or fails as Qt decides)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        output = subprocess.run([ldd, os.fspath(plugin)], capture_output=True, text=True,
                                timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return list(dict.fromkeys(_NOT_FOUND.findall(output)))


def install_hint(libraries: list[str]) -> str:
    """``apt-get install ...; dnf install ...`` for the sonames (unknown ones are named for
    ``apt-file search`` / ``dnf provides``)."""
    known = [PACKAGES[name] for name in libraries if name in PACKAGES]
    unknown = [name for name in libraries if name not in PACKAGES]
    parts = []
    if known:
        debian = " ".join(dict.fromkeys(package for package, _ in known))
        rhel = " ".join(dict.fromkeys(package for _, package in known))
        parts.append(f"on Debian/Ubuntu: apt-get install {debian}; on RHEL/Fedora: dnf install "
                     f"{rhel}")
    if unknown:
        parts.append(f"for {', '.join(unknown)}: apt-file search / dnf provides the name")
    return "; ".join(parts)


def xcb_problem() -> str | None:
    """Why Qt's xcb platform cannot start here, as one line, or None (another platform is
    chosen with ``QT_QPA_PLATFORM``, no plugin was found, or nothing is missing)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return None
    plugin = xcb_plugin()
    if plugin is None:
        return None
    missing = missing_libraries(plugin)
    if not missing:
        return None
    return (f"Qt's X11 platform plugin ({plugin.name}) cannot load: the system lacks "
            f"{', '.join(missing)} ({install_hint(missing)}; see docs/gui.md)")
