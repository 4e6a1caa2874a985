"""OpenMP threads that sleep when idle, for processes whose network runs in a graph runtime."""

import os
import subprocess
import sys

import pytest

from sdcpc_core import openmp


@pytest.fixture
def clean(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before PyTorch's import
    return monkeypatch


@pytest.mark.parametrize("backend", ["auto", "openvino", "onnxruntime"])
def test_graph_backends_get_sleeping_threads(clean, backend):
    assert openmp.sleep_when_idle(backend) is True
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_pytorch_backend_keeps_openmps_default(clean):
    assert openmp.sleep_when_idle("torch") is False
    assert "OMP_WAIT_POLICY" not in os.environ


def test_too_late_once_pytorch_is_imported(clean):
    clean.setitem(sys.modules, "torch", object())
    assert openmp.sleep_when_idle("openvino") is False
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.parametrize("chosen,sleeps", [("ACTIVE", False), ("passive", True)])
def test_the_users_policy_wins(clean, chosen, sleeps):
    clean.setenv("OMP_WAIT_POLICY", chosen)
    assert openmp.sleep_when_idle("openvino") is sleeps
    assert os.environ["OMP_WAIT_POLICY"] == chosen


@pytest.mark.parametrize("argv,backend", [
    (["segment", "v.mp4"], "auto"), (["segment", "--backend", "torch", "v.mp4"], "torch"),
    (["demo", "--backend=onnxruntime"], "onnxruntime"), (["segment", "--backend"], "auto"),
])
def test_backend_argument(argv, backend):
    assert openmp.backend_argument(argv) == backend


CLI_POLICY = """
import os, sys
from sdcpc_core import cli
assert "torch" not in sys.modules, "importing the CLI must not import PyTorch"
try:
    cli.main(sys.argv[1:] + ["--help"])
except SystemExit:
    pass
print(os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("argv,policy", [
    (["segment", "--backend", "openvino"], "PASSIVE"), (["demo"], "PASSIVE"),
    (["segment", "--backend", "torch"], "None"), (["train"], "None"), (["adapt"], "None"),
])
def test_cli_sets_the_policy_before_pytorch_for_inference_on_a_graph_backend(argv, policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", CLI_POLICY, *argv], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == policy
