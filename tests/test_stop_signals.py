# SPDX-License-Identifier: GPL-3.0-or-later
"""Stop signals: a second signal while the first one's callback runs must not hang the
process (found in the frame assembler process: two SIGTERMs, ``threading.Event.set``)."""

import signal
import subprocess
import sys

_PROGRAM = """
import threading, time
from om.lib.stop_signals import on_stop_signals
lock = threading.Lock()  # as inside threading.Event.set
calls = []

def callback():
    with lock:
        calls.append(1)
        print("in callback", flush=True)
        time.sleep(0.5)  # the second signal comes now

on_stop_signals(callback)
print("ready", flush=True)
deadline = time.monotonic() + 20
while not calls and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(1.0)
print("calls", len(calls), flush=True)
"""


def test_a_second_signal_during_the_callback_is_ignored_not_a_deadlock():
    process = subprocess.Popen([sys.executable, "-c", _PROGRAM], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline().strip() == "in callback"
        process.send_signal(signal.SIGINT)  # while the first callback holds the lock
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert output.strip() == "calls 1", output  # the second signal was ignored
