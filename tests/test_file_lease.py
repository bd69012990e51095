# SPDX-License-Identifier: GPL-3.0-or-later
"""Read leases (``om.data_retrieval_layer.file_lease``), with real files in ``tmp_path`` and
real other processes that write or truncate them."""

import os
import subprocess
import sys
import time

import pytest
from helpers import process_holding_open_for_writing, skip_unless_leases_are_taken

from om.data_retrieval_layer import file_lease
from om.data_retrieval_layer.file_lease import (
    LeaseRefusedError,
    file_system_type,
    lease_held,
    take_read_lease,
)

_WAIT_S = 20.0


@pytest.fixture
def local_file(tmp_path):
    skip_unless_leases_are_taken(tmp_path)
    path = tmp_path / "leased.bin"
    path.write_bytes(b"\x01" * 65536)
    fd = os.open(path, os.O_RDONLY)
    yield path, fd
    os.close(fd)


def test_a_truncation_waits_for_the_lease_and_its_holder_sees_the_break(local_file):
    path, fd = local_file
    leased = take_read_lease(fd)
    assert leased != fd and lease_held(leased)
    truncater = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], 100); print('cut')",
         str(path)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + _WAIT_S
        while lease_held(leased) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not lease_held(leased), "the lease break never came"
        # The kernel's break signal did not kill this process, and the truncation waits.
        assert truncater.poll() is None
        assert os.stat(path).st_size == 65536
        os.close(leased)
        output, _ = truncater.communicate(timeout=_WAIT_S)
    finally:
        truncater.kill()
        truncater.wait()
    assert output == "cut\n" and os.stat(path).st_size == 100


def test_no_lease_while_another_process_has_the_file_open_for_writing(local_file):
    path, fd = local_file
    with process_holding_open_for_writing(path), pytest.raises(
            LeaseRefusedError, match="no read lease: a process has it open for writing"):
        take_read_lease(fd)
    # Once the writer has gone, the lease is granted.
    leased = take_read_lease(fd)
    assert lease_held(leased)
    os.close(leased)
    assert not lease_held(leased)


def test_no_lease_on_a_file_system_that_is_not_local():
    fd = os.open("/proc/self/status", os.O_RDONLY)
    try:
        assert file_system_type(os.fstat(fd).st_dev) == "proc"
        with pytest.raises(LeaseRefusedError, match="file system of type 'proc', not a local"):
            take_read_lease(fd)
    finally:
        os.close(fd)


def test_an_unknown_device_has_an_unknown_file_system():
    assert file_system_type(os.makedev(4095, 1048575)) == "unknown"


def test_no_lease_where_the_kernel_would_not_hold_writers_back_long_enough(local_file,
                                                                          tmp_path, monkeypatch):
    """A lease-break time set (by the system's administrator) below a few seconds would let a
    truncation through while an image is processed: no lease then, and none when the setting
    cannot be read."""
    _, fd = local_file
    setting = tmp_path / "lease-break-time"
    monkeypatch.setattr(file_lease, "LEASE_BREAK_TIME_FILE", str(setting))

    def lease_with(value):
        if value is None:
            setting.unlink()
        else:
            setting.write_text(value)
        file_lease.lease_break_time_s.cache_clear()  # read once per process
        return take_read_lease(fd)

    try:
        with pytest.raises(LeaseRefusedError, match=r"lease-break time .* is 1 s, under 5 s"):
            lease_with("1\n")
        with pytest.raises(LeaseRefusedError, match="is 0 s"):
            lease_with(None)
        leased = lease_with("45\n")
        assert lease_held(leased)
        os.close(leased)
    finally:
        monkeypatch.undo()
        file_lease.lease_break_time_s.cache_clear()
