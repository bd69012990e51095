# SPDX-License-Identifier: GPL-3.0-or-later
"""A copy of ``monitor.yaml`` with some values changed, its comments and key order kept
(ruamel.yaml's round-trip mode), e.g. the peakfinder8 parameters chosen in the tweaker."""

import os
import pathlib
from typing import Any, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from om.lib.exceptions import OmConfigurationError


def write_configuration_copy(source: str | os.PathLike, target: str | os.PathLike,
                             values: Mapping[tuple[str, str], Any]) -> pathlib.Path:
    """Writes ``source`` to ``target`` with ``values[(group, key)]`` set (a key missing from
    its group is added at the group's end).

    Returns:
        The target path.

    Raises:
        OmConfigurationError: when the source cannot be read or is not a map of maps, or the
            target cannot be written.
    """
    yaml = YAML()  # round-trip: comments, order and quoting survive
    yaml.preserve_quotes = True
    try:
        with open(source, encoding="utf-8") as stream:
            content = yaml.load(stream)
    except (OSError, YAMLError) as error:
        raise OmConfigurationError(f"cannot read {source}: {' '.join(str(error).split())}")
    if not isinstance(content, dict):
        raise OmConfigurationError(f"{source}: the top level must be a map of groups")
    for (group, key), value in values.items():
        if not isinstance(content.get(group), dict):
            raise OmConfigurationError(f"{source}: no group '{group}' to set {key} in")
        content[group][key] = value
    target = pathlib.Path(target)
    try:
        with open(target, "w", encoding="utf-8") as stream:
            yaml.dump(content, stream)
    except OSError as error:
        raise OmConfigurationError(f"cannot write {target}: {error}")
    return target
