"""Soak: 60 s of a 30 Hz 640x480 stream into the node process; memory, queue and accounting hold.

Runs ``benchmarks/soak.py`` (its own node process and ROS domain) with a tiny random-weight
checkpoint and a small network input, then checks the pass criteria it wrote to ``soak.json``.
"""

import json
import signal
import subprocess
import sys
import time

import psutil
from ros_harness import REPO

SECONDS = 60
LIMIT_S = SECONDS + 300


def stacks_then_kill(proc: subprocess.Popen, out) -> str:
    """A soak that ran past its limit: every thread's stack of the soak process (on its stderr)
    and of its node (in the node's log; both register faulthandler on SIGUSR1), then kill both."""
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try:
            psutil.Process(pid).send_signal(signal.SIGUSR1)
        except psutil.NoSuchProcess:
            pass
    time.sleep(3)
    for pid in reversed(family):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    stdout, stderr = proc.communicate()
    logs = "".join(f"\n--- {log.name} ---\n{log.read_text()[-8000:]}" for log in out.glob("node_*.log"))
    return f"soak still running after {LIMIT_S} s; its stacks:\n{stderr[-12000:]}\nnode:{logs}"


def test_soak_60s_memory_queue_and_accounting(tmp_path):
    out = tmp_path / "soak"
    out.mkdir()
    cmd = [sys.executable, "-X", "faulthandler", str(REPO / "benchmarks" / "soak.py"),
           "--seconds", str(SECONDS), "--tiny-checkpoint", "--input-size", "64", "80",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(stacks_then_kill(proc, out)) from None
    run = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert (out / "soak.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "soak.json").read_text())
    assert (out / "soak.png").stat().st_size > 0
    c, s = report["criteria"], report["summary"]
    assert c["memory_growth_below_5pct"]["pass"], c["memory_growth_below_5pct"]
    assert c["bounded_queue"]["pass"], c["bounded_queue"]
    assert c["every_frame_accounted"]["pass"], c["every_frame_accounted"]
    assert c["node_alive_and_clean_exit"]["pass"], run.stdout[-3000:] + run.stderr[-3000:]
    # the stream really ran, frames were answered, and every one is accounted for
    assert s["sent"] >= SECONDS * 30 * 0.9
    assert s["answered"] > 0 and s["rejected"] == 0 and s["failed"] == 0
    assert s["sent"] - s["in_flight"] == s["answered"] + s["dropped"]
    assert len(report["samples"]) >= SECONDS - 2
    assert report["passed"] and run.returncode == 0, run.stdout[-3000:]
