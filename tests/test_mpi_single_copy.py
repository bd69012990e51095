# SPDX-License-Identifier: GPL-3.0-or-later
"""When a processing rank must drive its large sends itself: MPICH's rule for single-copy (CMA)
transfers, from Yama's ptrace scope and MPICH's variables. The whole monitor with CMA off runs in
tests/test_files_source.py."""

import pytest

from om.parallelization_layer.mpi_single_copy import large_sends_need_the_sender

MPICH = "MPICH Version:      5.0.2\nMPICH Release date: ..."


@pytest.mark.parametrize("scope, environment, driven", [
    (None, {}, False),  # no Yama: CMA works
    ("0\n", {}, False),
    ("1\n", {}, True),  # Ubuntu's default
    ("2\n", {}, True),
    ("3\n", {}, True),
    ("0\n", {"MPIR_CVAR_CH4_CMA_ENABLE": "0"}, True),  # Docker: CMA turned off by hand
    ("0\n", {"MPICH_CH4_CMA_ENABLE": "0"}, True),
    ("0\n", {"MPIR_CVAR_CH4_CMA_ENABLE": "1"}, False),
])
def test_mpich_drives_large_sends_without_cma(tmp_path, scope, environment, driven):
    scope_file = tmp_path / "ptrace_scope"
    if scope is not None:
        scope_file.write_text(scope)
    assert large_sends_need_the_sender(MPICH, environment, str(scope_file)) == driven


def test_other_mpi_libraries_are_assumed_to_copy_by_themselves(tmp_path):
    scope_file = tmp_path / "ptrace_scope"
    scope_file.write_text("1\n")
    assert not large_sends_need_the_sender("Open MPI v5.0.3, package: Open MPI ...", {},
                                           str(scope_file))
