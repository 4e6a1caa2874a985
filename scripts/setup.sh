#!/usr/bin/env bash
# Set up sdcpc from nothing: a virtual environment with CPU torch, the package (editable) with the
# PyPI ROS 2 wheels, dev tools and the deployment runtimes (ONNX Runtime, OpenVINO), and the
# sdcpc_interfaces messages built into it.
#   bash scripts/setup.sh [VENV]          (default .venv)
# On a machine with ROS 2 from apt, use colcon instead (README, "On a ROS 2 install").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# torch==2.13.0 is the CPU build; any other pin downloads a multi-GB CUDA build.
"$VENV/bin/pip" install --quiet "torch==2.13.0" -e ".[ros,dev,deploy]"
bash scripts/build_interfaces.sh "$VENV"
echo "sdcpc is set up in $VENV"
