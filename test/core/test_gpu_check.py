"""scripts/gpu_check.sh on a machine without a GPU: it runs the checks that run anywhere, then
stops with exit status 3 and says that the GPU checks did not run (docs/gpu_check.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run scripts/gpu_check.sh itself")
def test_without_a_gpu_stops_after_the_cpu_checks_with_exit_3():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--python", sys.executable], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "2/7 CPU checks" in out and " passed" in out  # the method tests ran, and passed
    assert "STOPPED: no CUDA device" in out and "did NOT run" in out
    assert "4/7" not in out  # nothing GPU-only was attempted


def test_bad_argument_is_an_error():
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
@pytest.mark.parametrize("what", ["engine", "bench"])
def test_python_half_refuses_without_a_gpu(what):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", what, "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "no CUDA device" in proc.stderr
