"""OpenMP's idle threads in a process whose network runs in OpenVINO or ONNX Runtime.

PyTorch's OpenMP threads (libgomp) spin for a while after each parallel region before they
sleep, unless ``OMP_WAIT_POLICY`` says otherwise. With a graph runtime, PyTorch only prepares the
frame and reads the labels, a few short parallel regions per step; its spinning threads then hold
the cores the runtime's own threads (TBB) need for the next frame's network. Letting them sleep at
once (``OMP_WAIT_POLICY=PASSIVE``) made the OpenVINO fp32 step of SD-CPC-B0 (480×480, 150
classes, 2 cores) 8–22 % faster (docs/benchmarks-engine.md, eighth session); it makes PyTorch's
own eager network slower (its regions follow each other closely), so it is for processes whose
network is not PyTorch's: the node and the evaluation tools (``sdcpc_ros``), ``sdcpc segment`` and
``sdcpc demo`` on a graph backend. libgomp reads the policy once, when PyTorch is imported: this
must run before that, and an ``OMP_WAIT_POLICY`` the user set always wins.
"""

from __future__ import annotations

import os
import sys

GRAPH_RUNTIME_BACKENDS = ("auto", "openvino", "onnxruntime")  # auto: OpenVINO on a CPU


def sleep_when_idle(backend: str = "auto") -> bool:
    """Ask OpenMP for sleeping idle threads when ``backend`` runs the network in a graph runtime
    and PyTorch is not imported yet; True when the process has that policy."""
    chosen = os.environ.get("OMP_WAIT_POLICY")
    if chosen is None and backend in GRAPH_RUNTIME_BACKENDS and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = chosen = "PASSIVE"
    return (chosen or "").upper() == "PASSIVE"


def backend_argument(argv: list[str]) -> str:
    """The value of ``--backend`` in a command line (``auto`` when absent), read before the
    parser exists (building it imports PyTorch)."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return "auto"
