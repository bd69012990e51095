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


SPOT_PEAKFINDER8 = {"adc_threshold": 50.0, "minimum_snr": 6.0, "min_pixel_count": 2,
                    "max_pixel_count": 50, "local_bg_radius": 3, "min_res": 20, "max_res": 250,
                    "max_num_peaks": 2048, "bad_pixel_map_filename": None,
                    "bad_pixel_map_hdf5_path": None}
"""peakfinder8 settings that find the synthetic Gaussian spots of the 512x512 simulator modes."""

_SPOT_MODES = {"streaming-receiver": "StreamingReceiverDataRetrieval",
               "dectris-stream": "DectrisStreamDataRetrieval",
               "files": "Hdf5FilesDataRetrieval"}


def write_simulator_configuration(path: str | pathlib.Path, mode: str) -> pathlib.Path:
    """Writes a ``monitor.yaml`` that reads the output of ``om_simulator.py mode`` with its
    default options: the mode's Data Retrieval class, its geometry shipped in ``om/data``
    (``jungfrau1M.geom``, else ``simulator512.geom``) and, for the 512x512 modes, peakfinder8
    settings that find its spots.

    Raises:
        KeyError: for an unknown mode.
    """
    if mode == "jungfrau":
        return write_monitor_configuration(path, {})
    data_retrieval = {"fallback_beam_energy_in_eV": 12400.0,
                      "fallback_detector_distance_in_mm": 100.0}
    return write_monitor_configuration(path, {
        "om": {"data_retrieval_layer": _SPOT_MODES[mode]},
        "crystallography": {"geometry_file": "simulator512.geom"},
    }, replace_groups={"data_retrieval_layer": data_retrieval,
                       "peakfinder8_peak_detection": SPOT_PEAKFINDER8})
