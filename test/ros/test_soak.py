"""Soak: 60 s of a 30 Hz 640x480 stream into the node process; memory, queue and accounting hold.

Runs ``benchmarks/soak.py`` (its own node process and ROS domain) with a tiny random-weight
checkpoint and a small network input, then checks the pass criteria it wrote to ``soak.json``.
"""

import json
import subprocess
import sys

from ros_harness import REPO

SECONDS = 60


def test_soak_60s_memory_queue_and_accounting(tmp_path):
    out = tmp_path / "soak"
    cmd = [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--seconds", str(SECONDS),
           "--tiny-checkpoint", "--input-size", "64", "80", "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 300)
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
