#!/usr/bin/env bash
# Make the folder that `scripts/setup.sh --ros2-pip DIR` installs from, out of the upstream ROS 2
# repositories (needs git and network access; PyPI has none of these packages):
#   DIR/wheels/  the launch system, launch_pytest and the ros2 command line, built unchanged with
#                `pip wheel --no-deps` at the commits CI's folder (../shared/ros2-pip) was built from
#   DIR/src/composition_interfaces/  the messages launch_ros imports (built by setup.sh)
#
#   bash scripts/fetch_ros2_pip.sh DIR && bash scripts/setup.sh .venv --ros2-pip DIR
#
# ROS2_GIT is where the repositories are, with {} for the name (default https://github.com/ros2/{});
# PYTHON runs `pip wheel` (default python3; it needs pip, setuptools and wheel).
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR   (then: bash scripts/setup.sh .venv --ros2-pip DIR)" >&2
  exit 2
fi
DIR=$1
URL=${ROS2_GIT:-https://github.com/ros2/\{\}}
PY=${PYTHON:-python3}

# repository, commit, packages in it (subdirectories; . = the repository itself)
SOURCES=(
  "launch 02595bafc7891d4d287667b6aa9161edf738e9f3 launch launch_xml launch_yaml launch_testing launch_pytest"
  "launch_ros f9ab9371824d470bca47602bc7d277eb2217c90d launch_ros ros2launch"
  "ros2cli e20d2c664fc2981b0b80ebed534e5becc6fdbf34 ros2cli ros2pkg ros2run ros2node ros2topic ros2param ros2lifecycle ros2service"
  "rosidl_runtime_py 3327b1dc488af514017c5446ffff12d102bbe94a ."
  "rcl_interfaces f6b3741d921ef5414125091b2ccc74b863be3c24"
)

work=$(mktemp -d "${TMPDIR:-/tmp}/ros2_pip.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$DIR/wheels" "$DIR/src"
for entry in "${SOURCES[@]}"; do
  read -r repo commit packages <<<"$entry"
  echo "$repo @ ${commit:0:8}"
  git clone --quiet --no-checkout "${URL//\{\}/$repo}" "$work/$repo"
  git -C "$work/$repo" checkout --quiet "$commit"
  for package in $packages; do
    "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DIR/wheels" "$work/$repo/$package"
  done
done
rm -rf "$DIR/src/composition_interfaces"
cp -r "$work/rcl_interfaces/composition_interfaces" "$DIR/src/"
echo "$(find "$DIR/wheels" -name '*.whl' | wc -l) wheels in $DIR/wheels; next: bash scripts/setup.sh .venv --ros2-pip $DIR"
