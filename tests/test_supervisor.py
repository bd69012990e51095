# SPDX-License-Identifier: GPL-3.0-or-later
"""``om_monitor.py -n N``'s supervision (:mod:`om.supervisor`) with real child processes standing
for the MPI job: what is restarted, what is final, the restart count, giving up."""

import signal
import subprocess
import sys
import threading
import time

from om.supervisor import Supervisor, job_command


def _job(tmp_path, body: str) -> list[str]:
    """A job that appends its restart count to runs.txt, then runs ``body``."""
    script = tmp_path / "job.py"
    script.write_text("import os, sys, time\n"
                      f"open({str(tmp_path / 'runs.txt')!r}, 'a').write("
                      "os.environ['OM_MONITOR_RESTARTS'] + '\\n')\n" + body)
    return [sys.executable, str(script)]


def _runs(tmp_path) -> list[int]:
    return [int(line) for line in (tmp_path / "runs.txt").read_text().split()]


def test_a_dying_job_is_restarted_until_too_many_in_a_row(tmp_path, capfd):
    supervisor = Supervisor(_job(tmp_path, "sys.exit(75)"), back_off=(0.0,), max_in_a_row=3)
    assert supervisor.run() == 1
    assert _runs(tmp_path) == [0, 1, 2, 3]  # the count each job was given
    error = capfd.readouterr().err
    assert "restart 3 (3 in a row)" in error
    assert "error: the monitor died 4 times in a row" in error and "not started again" in error


def test_a_job_that_finished_or_cannot_start_is_not_restarted(tmp_path):
    for code in (0, 1):
        (tmp_path / "runs.txt").unlink(missing_ok=True)
        assert Supervisor(_job(tmp_path, f"sys.exit({code})"), back_off=(0.0,)).run() == code
        assert _runs(tmp_path) == [0]


def test_a_stop_signal_stops_the_job_and_the_supervisor_for_good(tmp_path):
    """The job catches SIGTERM and exits with 75 (as a monitor might when stopped while a rank
    is lost): no restart all the same."""
    ready = tmp_path / "ready"
    body = ("import signal\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
            f"open({str(ready)!r}, 'w').close()\ntime.sleep(120)\n")
    supervisor = Supervisor(_job(tmp_path, body), back_off=(0.0,))
    result = []
    thread = threading.Thread(target=lambda: result.append(supervisor.run()))
    thread.start()
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:  # its handler is installed
        time.sleep(0.05)
    supervisor.request_stop(signal.SIGTERM)
    thread.join(60)
    assert result == [75] and _runs(tmp_path) == [0]


def test_the_job_is_mpiexec_without_auto_cleanup():
    command = job_command(3, ["tcp://a:1,tcp://a:2", "-c", "monitor.yaml"])
    assert command[0].endswith("mpiexec") and command[1:4] == ["-disable-auto-cleanup", "-n", "3"]
    assert command[4].endswith("om_monitor.py") and command[5:] == ["tcp://a:1,tcp://a:2", "-c",
                                                                    "monitor.yaml"]
    completed = subprocess.run([sys.executable, "-m", "om.monitor_launcher", "-n", "1", "x"],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "at least 2 ranks" in completed.stderr
