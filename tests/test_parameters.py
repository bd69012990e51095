# SPDX-License-Identifier: GPL-3.0-or-later
"""Configuration checks: every error names the key and the file."""

import pathlib

import pytest

from om.lib.exceptions import OmConfigurationError
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup

GROUPS = [ParameterGroup("crystallography", (
    Parameter("geometry_file", str, required=True),
    Parameter("min_num_peaks_for_hit", int, default=10),
    Parameter("threshold", float, default=1.5),
    Parameter("names", list, element_type=str, default=[]),
    Parameter("units", str, default="photons", choices=("photons", "keV")),
))]


def _write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(text)
    return path


def test_valid_file_gives_values_and_defaults(tmp_path):
    path = _write(tmp_path, "crystallography:\n  geometry_file: a.geom\n  threshold: 2\n")
    parameters = MonitorParameters(path)
    parameters.validate(GROUPS)
    assert parameters.get("crystallography", "geometry_file") == "a.geom"
    assert parameters.get("crystallography", "threshold") == 2.0
    assert parameters.get("crystallography", "min_num_peaks_for_hit") == 10
    assert parameters.resolve_path("a.geom") == str(tmp_path / "a.geom")


@pytest.mark.parametrize("text, expected", [
    ("crystallography:\n  geometry_file: a\n  min_num_peak_for_hit: 3\n",
     "crystallography/min_num_peak_for_hit: unknown key"),
    ("crystallography:\n  min_num_peaks_for_hit: 3\n",
     "crystallography/geometry_file: required key is missing"),
    ("crystallography:\n  geometry_file: a\n  min_num_peaks_for_hit: 3.5\n",
     "crystallography/min_num_peaks_for_hit: must be an integer"),
    ("crystallography:\n  geometry_file: a\n  min_num_peaks_for_hit: true\n",
     "crystallography/min_num_peaks_for_hit: must be an integer"),
    ("crystallography:\n  geometry_file: a\n  names: [a, 3]\n",
     "crystallography/names: every element must be a string"),
    ("crystallography:\n  geometry_file: a\n  units: ADU\n",
     "crystallography/units: must be one of"),
    ("crystallography:\n  geometry_file: a\npeakfinder9:\n  x: 1\n", "unknown group 'peakfinder9'"),
])
def test_errors_name_key_and_file(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(OmConfigurationError) as error:
        MonitorParameters(path).validate(GROUPS)
    assert expected in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(OmConfigurationError, match="does not exist"):
        MonitorParameters(tmp_path / "absent.yaml")
    with pytest.raises(OmConfigurationError, match="cannot read"):
        MonitorParameters(_write(tmp_path, "crystallography: [unclosed\n"))
    with pytest.raises(OmConfigurationError, match="must be a map"):
        MonitorParameters(_write(tmp_path, "crystallography: 3\n"))


def test_relative_paths_start_where_the_file_is_named_and_find_shipped_files(tmp_path):
    """A symbolic link to the configuration (the repository's ``monitor.yaml``) resolves paths
    from the link's folder; a bare name of a file in om/data finds it; a file beside the
    configuration wins over the shipped one."""
    from om.lib.package_data import packaged_file

    target = tmp_path / "package" / "monitor.yaml"
    target.parent.mkdir()
    target.write_text("crystallography:\n  geometry_file: a.geom\n")
    link = tmp_path / "root" / "monitor.yaml"
    link.parent.mkdir()
    link.symlink_to(target)
    parameters = MonitorParameters(link)
    assert parameters.resolve_path("calibration/d.h5") == str(link.parent / "calibration/d.h5")
    assert parameters.resolve_path("jungfrau1M.geom") == str(packaged_file("jungfrau1M.geom"))
    (link.parent / "jungfrau1M.geom").write_text("; mine\n")
    assert parameters.resolve_path("jungfrau1M.geom") == str(link.parent / "jungfrau1M.geom")
    assert parameters.resolve_path("/abs/x.geom") == "/abs/x.geom"
