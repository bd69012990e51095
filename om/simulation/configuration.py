# SPDX-License-Identifier: GPL-3.0-or-later
"""Writing a ``monitor.yaml`` from the packaged example, with some keys changed.

The example (``om/data/monitor.yaml``, also the repository's ``monitor.yaml``) is the one
source of default values: demos and tests start from it, so they run what users run.
"""

import pathlib
from typing import Any

from ruamel.yaml import YAML

from om.lib.package_data import packaged_file


def write_monitor_configuration(path: str | pathlib.Path,
                                overrides: dict[str, dict[str, Any]],
                                replace_groups: dict[str, dict[str, Any]] | None = None,
                                ) -> pathlib.Path:
    """Writes the packaged example configuration with ``overrides`` applied.

    The example's geometry file is made absolute, so the written file works from any folder.

    Args:
        path: where to write the YAML file.
        overrides: ``{group: {key: value}}`` to set (comments of the example are kept).
        replace_groups: ``{group: {key: value}}``: groups written anew, whole (e.g. the
            ``data_retrieval_layer`` group of another detector).

    Returns:
        The path written.
    """
    yaml = YAML()
    content = yaml.load(packaged_file("monitor.yaml").read_text(encoding="utf-8"))
    content["crystallography"]["geometry_file"] = str(packaged_file("jungfrau1M.geom"))
    for group, values in (replace_groups or {}).items():
        content[group] = dict(values)
    for group, values in overrides.items():
        content.setdefault(group, {})
        for key, value in values.items():
            content[group][key] = value
    path = pathlib.Path(path)
    with open(path, "w", encoding="utf-8") as stream:
        yaml.dump(content, stream)
    return path
