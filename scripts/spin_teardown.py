"""How a client that spins rclpy in a daemon thread dies at exit, and how BackgroundSpin does not.

    python scripts/spin_teardown.py --pattern daemon --runs 150    # the soak client before 3e7e9b1
    python scripts/spin_teardown.py --pattern background --runs 150  # sdcpc_ros.spinning.BackgroundSpin

One publisher process sends a 1 kB String at about 1 kHz on a private ROS domain. Each run is a
fresh process that subscribes, spins its executor in a thread, receives about 30 messages, tears
down (``daemon``: ``Executor.shutdown``, destroy the node, shut the context down, as the old soak
client did; ``background``: stop and join the thread first) and exits. A run that does not end
within 20 s is a hang (its C stacks are printed with gdb when gdb is installed, then it is
killed); one that ends with a signal or a non-zero status is a crash. Prints the counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PUBLISHER = """
import time, rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("teardown_publisher")
pub = node.create_publisher(String, "/chatter", 10)
msg = String(data="x" * 1000)
while True:
    pub.publish(msg)
    time.sleep(0.001)
"""

CLIENT = """
import sys, threading, time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

context = rclpy.Context()
rclpy.init(context=context)
node = rclpy.create_node("teardown_client", context=context)
received = []
node.create_subscription(String, "/chatter", received.append, 10)
executor = SingleThreadedExecutor(context=context)
executor.add_node(node)
if sys.argv[1] == "daemon":
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
else:
    from sdcpc_ros.spinning import BackgroundSpin
    spinner = BackgroundSpin(executor, context)
    thread = spinner._thread
deadline = time.monotonic() + 5
while len(received) < 30 and time.monotonic() < deadline:
    time.sleep(0.01)
if sys.argv[1] != "daemon":
    spinner.stop()
executor.shutdown(timeout_sec=5.0)
node.destroy_node()
rclpy.shutdown(context=context)
print(f"received {len(received)}; spin thread alive after teardown: {thread.is_alive()}", flush=True)
"""


def gdb_stacks(pid: int) -> str:
    if shutil.which("gdb") is None:
        return "(gdb not installed)"
    done = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 25"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout[-6000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", choices=("daemon", "background"), required=True)
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--domain", type=int, default=None, help="ROS domain (default: a free one)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from sdcpc_ros.node_process import domain_id_for

    domain = args.domain if args.domain is not None else domain_id_for("spin_teardown")
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=env)
    counts = {"ok": 0, "crash": 0, "hang": 0}
    stranded = 0
    started = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            proc = subprocess.Popen([sys.executable, "-c", CLIENT, args.pattern], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                out, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                counts["hang"] += 1
                print(f"run {run}: HANG; its stacks:\n{gdb_stacks(proc.pid)}", flush=True)
                proc.kill()
                out, _ = proc.communicate()
                continue
            stranded += "alive after teardown: True" in out
            if proc.returncode == 0:
                counts["ok"] += 1
            else:
                counts["crash"] += 1
                how = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                       else f"status {proc.returncode}")
                print(f"run {run}: CRASH ({how}): {out.strip()[-400:]}", flush=True)
    finally:
        publisher.kill()
        publisher.wait()
    print(f"{args.pattern}: {args.runs} runs in {time.monotonic() - started:.0f} s: {counts['ok']} "
          f"clean, {counts['crash']} crashed, {counts['hang']} hung; spin thread still running when "
          f"the teardown returned in {stranded}")
    return 0 if counts["crash"] == counts["hang"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
