# SPDX-License-Identifier: GPL-3.0-or-later
"""Files shipped with the package in ``om/data``: the example ``monitor.yaml`` and geometries."""

import pathlib
from importlib import resources


def packaged_file(name: str) -> pathlib.Path:
    """Returns the path of a file shipped in ``om/data`` (e.g. ``jungfrau1M.geom``)."""
    return pathlib.Path(str(resources.files("om") / "data" / name))
