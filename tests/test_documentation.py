# SPDX-License-Identifier: GPL-3.0-or-later
"""The documentation keeps up with the code: every configuration key and problem kind."""

import pathlib
import re

from om.data_retrieval_layer.data_retrieval_jungfrau_zmq import Jungfrau1MZmqDataRetrieval
from om.lib.parameters import MonitorParameters
from om.monitor import OM_GROUP
from om.processing_layer.crystallography import CrystallographyProcessing

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
OM = pathlib.Path(__file__).resolve().parents[1] / "om"
GROUPS = [OM_GROUP, *Jungfrau1MZmqDataRetrieval.parameter_groups,
          *CrystallographyProcessing.parameter_groups]


def test_every_configuration_key_is_documented():
    text = (DOCS / "configuration.md").read_text()
    for group in GROUPS:
        assert f"## Group `{group.name}`" in text
        for parameter in group.parameters:
            assert f"| `{parameter.name}` |" in text, f"{group.name}/{parameter.name}"


def test_the_example_configuration_is_valid_and_complete():
    parameters = MonitorParameters(OM / "data" / "monitor.yaml")
    parameters.validate(GROUPS)
    for group in GROUPS:
        missing = {p.name for p in group.parameters} - set(parameters.raw_group(group.name))
        assert not missing, f"{group.name}: {missing}"


def test_every_problem_kind_is_documented():
    text = (DOCS / "broadcast.md").read_text()
    kinds = set()
    for path in OM.rglob("*.py"):
        if "graphical_interfaces" in path.parts:  # the GUIs count their own, in docs/gui.md
            continue
        kinds |= set(re.findall(r'(?:problems\.report|self\._unusable)\(\s*"(\w+)"',
                                path.read_text()))
    assert kinds
    for kind in sorted(kinds):
        assert f"| `{kind}` |" in text, kind
