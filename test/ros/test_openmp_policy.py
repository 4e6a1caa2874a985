"""The node and the evaluation tools start with OpenMP threads that sleep when idle
(sdcpc_core.openmp): set by ``sdcpc_ros`` before anything imports PyTorch."""

import os
import subprocess
import sys

import pytest

POLICY = """
import importlib, os, sys
importlib.import_module(sys.argv[1])
assert "torch" in sys.modules  # the entry point has imported PyTorch, after the policy was set
print(os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("module", ["sdcpc_ros.node", "sdcpc_ros.lifecycle_node", "sdcpc_ros.evaluation.cli"])
@pytest.mark.parametrize("preset,want", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_entry_points_let_openmp_threads_sleep_unless_the_user_chose(module, preset, want):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", POLICY, module], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == want
