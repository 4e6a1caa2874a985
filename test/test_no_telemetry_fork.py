"""Importing sdcpc_core turns OpenVINO's telemetry off, so no export forks from a worker thread.

``openvino.convert_model`` (our IR export) otherwise sends usage events through openvino_telemetry,
which forks a process from a ThreadPoolExecutor thread per event: numba printed "Attempted to fork
from a non-main thread, the TBB library may be in an invalid state" 72 times for one tiny export
after the first labels (docs/operating-limits.md, "Forks").
"""

import subprocess
import sys

import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (the 'deploy' extra)")

SCRIPT = """
import os, sys, threading
forks = []
os.register_at_fork(before=lambda: forks.append(threading.current_thread().name))
import sdcpc_core
import openvino
from openvino.tools.ovc import telemetry_utils, telemetry_stub
assert telemetry_utils.tm is telemetry_stub, telemetry_utils.tm
telemetry_stub.Telemetry().send_event("ovc", "test", "no fork")  # what convert_model calls
try:
    import openvino_telemetry
except ImportError:
    print("openvino_telemetry: not importable")
print("forks:", forks)
"""


def test_openvino_telemetry_is_the_stub_and_sends_nothing():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "openvino_telemetry: not importable" in run.stdout, run.stdout
    assert "forks: []" in run.stdout, run.stdout + run.stderr[-3000:]
