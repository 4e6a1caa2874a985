#!/usr/bin/env bash
# Set up sdcpc from nothing: a virtual environment with CPU torch, the package (editable) with the
# PyPI ROS 2 wheels, dev tools and the deployment runtimes (ONNX Runtime, OpenVINO), the
# sdcpc_interfaces messages built into it, and sdcpc_ros registered in its ament index.
#   bash scripts/setup.sh [VENV] [--ros2-pip DIR]          (VENV default .venv)
# --ros2-pip DIR (or SDCPC_ROS2_PIP=DIR): also install the ROS 2 launch system and the `ros2`
# command line from DIR/wheels and build DIR/src/composition_interfaces (launch_ros imports it);
# PyPI has none of these (docs/pip-route.md). CI passes ../shared/ros2-pip. Without DIR, or when
# DIR does not exist, everything else is installed and the launch tests skip, saying why.
# Relative paths (VENV, DIR) are taken from the repository root.
# On a machine with ROS 2 from apt, use colcon instead (README, "On a ROS 2 install").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
ROS2_PIP=${SDCPC_ROS2_PIP:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --ros2-pip) [[ $# -ge 2 ]] || { echo "setup.sh: --ros2-pip needs a folder" >&2; exit 2; }
                ROS2_PIP=$2; shift 2 ;;
    -*) echo "usage: bash scripts/setup.sh [VENV] [--ros2-pip DIR]" >&2; exit 2 ;;
    *) VENV=$1; shift ;;
  esac
done
PYTHON=${PYTHON:-python3}
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
# torch==2.13.0 is the CPU build; any other pin downloads a multi-GB CUDA build.
"$VENV/bin/pip" install --quiet "torch==2.13.0" -e ".[ros,dev,deploy]"
bash scripts/build_interfaces.sh "$VENV"
bash scripts/register_ament.sh "$VENV"

if [[ -n "$ROS2_PIP" && -d "$ROS2_PIP/wheels" ]]; then
  # Built unchanged from upstream (DIR/README.md); --no-deps because their metadata names ROS
  # packages by their ROS names (ament_index_python), which the PyPI wheels spell ros-*. Their other
  # dependencies, from PyPI (pyyaml, psutil, catkin_pkg and lark-parser are already installed):
  wheels=("$ROS2_PIP"/wheels/*.whl)
  if ! compgen -G "$ROS2_PIP/wheels/launch_testing-*.whl" >/dev/null; then
    # launch_pytest imports launch_testing, and pytest loads launch_pytest's plugin at every start:
    # installed alone it would stop every test run (ModuleNotFoundError: launch_testing)
    echo "note: no launch_testing wheel in $ROS2_PIP/wheels: launch_pytest, which imports it, is" \
         "left out, and the launch tests will skip"
    mapfile -t wheels < <(printf '%s\n' "${wheels[@]}" | grep -v '/launch_pytest-')
  fi
  "$VENV/bin/pip" install --quiet --no-deps --no-warn-conflicts "${wheels[@]}"
  "$VENV/bin/pip" install --quiet --no-warn-conflicts osrf-pycommon argcomplete
  SDCPC_SKIP_PIP=1 bash scripts/build_interfaces.sh "$VENV" "$ROS2_PIP/src/composition_interfaces"
  "$VENV/bin/ros2" pkg prefix sdcpc_ros >/dev/null \
    || { echo "error: ros2 is installed but does not find sdcpc_ros in $VENV" >&2; exit 1; }
  echo "ROS 2 launch and command line installed from $ROS2_PIP: ros2 launch sdcpc_ros sdcpc.launch.py"
elif [[ -n "$ROS2_PIP" ]]; then
  echo "note: $ROS2_PIP/wheels not found: no ROS 2 launch system or ros2 command line installed;" \
       "the launch tests will skip (docs/pip-route.md says where to get them)"
fi
echo "sdcpc is set up in $VENV"
