"""scripts/gpu_check.sh on a machine without a GPU: it runs the checks that run anywhere, then
stops with exit status 3 and says that the GPU checks did not run (docs/gpu_check.md)."""

import importlib.util
import os
import subprocess
import sys
import types
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


def test_onnxruntime_checks_run_on_the_cpu_provider(capsys):
    """The ONNX Runtime half of step 6 (TensorRT / CUDA providers on a GPU) on the CPU provider:
    the same export, comparisons and report lines, so the code a GPU machine runs is exercised."""
    pytest.importorskip("onnxruntime", reason="the deploy runtimes are installed by scripts/setup.sh")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu_check.onnxruntime_checks(quick=True, device="cpu")
    out = capsys.readouterr().out
    assert gpu_check.failures == [], out
    lines = [line for line in out.splitlines() if line.startswith(("ok", "FAIL", "SKIP"))]
    assert len(lines) == 4 and all(line.startswith("ok") for line in lines), out
    assert "onnxruntime CPU fp32 labels == fp32 CPU torch labels" in out


def test_onnxruntime_checks_hide_only_the_providers_preferred_to_the_one_checked():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    ort = types.SimpleNamespace(get_available_providers=lambda: list(everything))
    with gpu_check._only_providers(ort, "CUDAExecutionProvider"):
        assert ort.get_available_providers() == everything[1:]
    with gpu_check._only_providers(ort, "TensorrtExecutionProvider"):
        assert ort.get_available_providers() == everything
    with gpu_check._only_providers(ort, "CPUExecutionProvider"):
        assert ort.get_available_providers() == everything[2:]
    assert ort.get_available_providers() == everything  # restored


def test_a_provider_that_cannot_start_is_a_failed_check_and_the_rest_goes_on(capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the deploy runtimes are installed by scripts/setup.sh")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    real = gpu_check.StreamingSegmenter.from_checkpoint

    def from_checkpoint(path, **kwargs):
        if kwargs.get("backend") == "onnxruntime":
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real(path, **kwargs)

    monkeypatch.setattr(gpu_check.StreamingSegmenter, "from_checkpoint", from_checkpoint)
    gpu_check.onnxruntime_checks(quick=True, device="cpu")
    out = capsys.readouterr().out
    assert gpu_check.failures == ["onnxruntime CPU fp32: the session starts and runs"], out
    assert "FAIL  onnxruntime CPU fp32: the session starts and runs  RuntimeError: libcudnn" in out
