"""``sdcpc-param`` (the pip route's ``ros2 param``) against a running node process."""

import subprocess
import sys

import pytest
from ros_harness import REPO, WAIT_S, domain_id_for, node_env, node_output, run_node, stop_node
from std_srvs.srv import Trigger  # noqa: F401  (the tool needs std_srvs; fail here if it is missing)

PARAMS = {"input_size": "[64,64]", "device": "cpu", "max_time_gap": "0.5"}


@pytest.fixture(scope="module")
def tool(tiny_checkpoint, tmp_path_factory):
    """Run ``python -m sdcpc_ros.param_tool ARGS`` in the node's domain; returns (rc, out, err)."""
    domain = domain_id_for(__name__)
    proc = run_node({**PARAMS, "checkpoint": str(tiny_checkpoint)}, domain,
                    tmp_path_factory.mktemp("logs"))

    def run(*args, timeout=5.0):
        done = subprocess.run([sys.executable, "-m", "sdcpc_ros.param_tool", "--timeout", str(timeout),
                               *args], env=node_env(domain), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout * 4 + 30)
        return done.returncode, done.stdout.strip(), done.stderr.strip()

    rc, out, err = run("get", "/sdcpc", "max_time_gap", timeout=WAIT_S)  # waits for start-up
    assert (rc, out) == (0, "0.5"), (err, node_output(proc)[-3000:])
    yield run
    stop_node(proc)
    assert proc.returncode == 0, node_output(proc)[-3000:]


def test_list_get_and_set_round_trip(tool):
    rc, out, _ = tool("list", "sdcpc")  # relative names work too, as with ros2 param
    assert rc == 0 and {"max_time_gap", "dynamic_classes", "publish_color"} <= set(out.split())

    assert tool("set", "/sdcpc", "max_time_gap", "2")[:2] == (0, "set max_time_gap = 2.0")  # int -> double
    assert tool("get", "/sdcpc", "max_time_gap")[:2] == (0, "2.0")
    assert tool("set", "/sdcpc", "dynamic_classes", "[car]")[0] == 0
    assert tool("get", "/sdcpc", "dynamic_classes")[:2] == (0, "[car]")
    assert tool("set", "/sdcpc", "publish_color", "false")[0] == 0
    assert tool("get", "/sdcpc", "publish_color")[:2] == (0, "false")


def test_refusals_print_the_node_reason_and_exit_1(tool):
    rc, _, err = tool("set", "/sdcpc", "max_time_gap", "-1.0")
    assert rc == 1 and "refused max_time_gap = -1.0" in err and "out of range" in err, err
    rc, _, err = tool("set", "/sdcpc", "dynamic_classes", "[unicorn]")
    assert rc == 1 and "unicorn" in err, err
    rc, _, err = tool("set", "/sdcpc", "max_time_gap", "fast")  # a string for a double
    assert rc == 1 and "refused" in err, err
    assert tool("get", "/sdcpc", "max_time_gap")[:2] == (0, "2.0")  # unchanged by the refusals
    rc, _, err = tool("get", "/sdcpc", "no_such_parameter")
    assert rc == 1 and "no parameter 'no_such_parameter'" in err, err


def test_reset_and_a_missing_node(tool):
    assert tool("reset", "/sdcpc")[:2] == (0, "reset /sdcpc: frame buffer cleared")
    rc, _, err = tool("get", "/not_running", "max_time_gap", timeout=1.0)
    assert rc == 1 and "node /not_running not found within 1 s" in err, err
    rc, _, err = tool("reset", "/not_running", timeout=1.0)
    assert rc == 1 and "/not_running/reset not found" in err, err
