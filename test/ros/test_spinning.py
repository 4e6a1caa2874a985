"""A client spinning in a thread stops and joins before its node is destroyed (sdcpc_ros.spinning).

The race these tests force is the one the soak's old client had: the spin thread passes the
executor's shutdown check, then ``Executor.shutdown`` runs (and destroys the executor's wake-up
guard condition) before that thread builds its wait set.
"""

import os
import subprocess
import sys
import threading
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from ros_harness import domain_id_for
from std_msgs.msg import String

from sdcpc_ros.spinning import BackgroundSpin


@pytest.fixture
def client():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id_for("test_spinning"))
    node = rclpy.create_node("spin_client", context=context)
    received = []
    node.create_subscription(String, "chatter", received.append, 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield context, node, executor, received
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def pause_between_shutdown_check_and_wait(executor, thread_name):
    """Hold ``thread_name`` inside the executor after it decided to wait, before it gathers what
    to wait on; returns (entered, release) events."""
    entered, release = threading.Event(), threading.Event()
    can_execute = executor.can_execute

    def held(entity):
        if threading.current_thread().name == thread_name and not entered.is_set():
            entered.set()
            release.wait(10)
        return can_execute(entity)

    executor.can_execute = held
    return entered, release


STRANDED = """
import linecache, os, sys, threading, time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

context = rclpy.Context()
rclpy.init(context=context)
node = rclpy.create_node("stranded_client", context=context)
node.create_subscription(String, "chatter", lambda msg: None, 10)
executor = SingleThreadedExecutor(context=context)
executor.add_node(node)
entered, release = threading.Event(), threading.Event()
can_execute = executor.can_execute

def held(entity):
    if threading.current_thread().name == "old_spin" and not entered.is_set():
        entered.set()
        release.wait(10)
    return can_execute(entity)

executor.can_execute = held
thread = threading.Thread(target=executor.spin, name="old_spin", daemon=True)
thread.start()
entered.wait(10)
executor.shutdown(timeout_sec=5.0)
release.set()

def waiting():  # the thread's Python frame stands at the call into rcl_wait
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and linecache.getline(
        frame.f_code.co_filename, frame.f_lineno).strip().startswith("wait_set.wait(")

deadline = time.monotonic() + 60
while not waiting() and thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.01)
print("waiting:", waiting())
rclpy.try_shutdown(context=context)
thread.join(timeout=2.0)
print("alive after the context's shutdown:", thread.is_alive(), flush=True)
os._exit(0)  # never finalize with that thread inside rclpy: that is what aborts a process
"""


def test_executor_shutdown_strands_a_thread_in_spin():
    """Why BackgroundSpin exists: with rclpy's own ``executor.spin`` in a thread, a shutdown in
    that window leaves the thread waiting with no timeout and nothing to wake it, even after the
    context is shut down (if rclpy changes this, BackgroundSpin is still correct, only no longer
    needed). In a child process: a thread stranded inside rclpy is what kills a process at exit."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id_for("test_spinning_stranded")),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    done = subprocess.run([sys.executable, "-c", STRANDED], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting: True" in done.stdout, done.stdout + done.stderr
    assert "alive after the context's shutdown: True" in done.stdout, (
        "rclpy's spin thread now ends after this race\n" + done.stdout + done.stderr)


def test_background_spin_stops_in_the_same_race(client):
    context, node, executor, _ = client
    entered, release = pause_between_shutdown_check_and_wait(executor, "client_spin")
    spinner = BackgroundSpin(executor, context, name="client_spin")
    assert entered.wait(10)
    release.set()
    started = time.monotonic()
    spinner.stop(timeout=5.0)
    assert time.monotonic() - started < 2.0


def test_background_spin_delivers_until_stopped(client):
    context, node, executor, received = client
    publisher = node.create_publisher(String, "chatter", 10)
    spinner = BackgroundSpin(executor, context)
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        publisher.publish(String(data="hello"))
        time.sleep(0.05)
    spinner.stop()
    assert received and received[0].data == "hello"
    count = len(received)
    publisher.publish(String(data="after stop"))
    time.sleep(0.3)
    assert len(received) == count  # nobody spins the executor any more


def test_stop_refuses_to_return_while_the_thread_still_runs(client, capfd):
    context, node, executor, _ = client
    entered, release = pause_between_shutdown_check_and_wait(executor, "stuck_spin")
    spinner = BackgroundSpin(executor, context, name="stuck_spin")
    assert entered.wait(10)
    with pytest.raises(RuntimeError, match="did not stop within 0.2 s"):
        spinner.stop(timeout=0.2)
    assert "in held" in capfd.readouterr().err  # every thread's stack, the held one's included
    release.set()
    spinner.stop()


@pytest.mark.parametrize("module", ["sdcpc_ros.node", "sdcpc_ros.lifecycle_node"])
def test_a_second_ctrl_c_while_stopping_does_not_kill_the_node(module, tmp_path):
    """Ctrl-C under `ros2 launch` reaches a node twice (the terminal's process group, then launch
    forwarding it): the second SIGINT, 0.3 s later, lands in the teardown or in the interpreter's
    finalization. The node must still exit 0 (it exited -2 before sdcpc_ros.spinning's
    handle_interrupts / ignore_interrupts)."""
    import signal

    from ros_harness import node_output, run_node, stop_node

    proc = run_node({"backend": "torch", "device": "cpu", "input_size": "[64,96]"},
                    domain_id_for(f"double_sigint_{module}"), tmp_path, module=module)
    try:
        deadline = time.monotonic() + 120
        started = "backend torch" if module == "sdcpc_ros.node" else "Fast DDS profile"  # unconfigured
        while started not in node_output(proc) and time.monotonic() < deadline:
            assert proc.poll() is None, node_output(proc)[-3000:]
            time.sleep(0.2)
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
        assert proc.wait(timeout=60) == 0, node_output(proc)[-3000:]
    finally:
        stop_node(proc)
