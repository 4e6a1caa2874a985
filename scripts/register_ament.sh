#!/usr/bin/env bash
# Register the editable sdcpc_ros install in the ament index of its virtual environment, the way
# `colcon build --symlink-install` lays a package out in its install prefix, so that
# `ros2 pkg list`, `ros2 run sdcpc_ros sdcpc_node`, `ros2 launch sdcpc_ros sdcpc.launch.py` and
# launch_ros's Node(package="sdcpc_ros", ...) find it (pip install -e installs none of this):
#
#   VENV/share/ament_index/resource_index/packages/sdcpc_ros   the package marker (resource/)
#   VENV/share/sdcpc_ros/{package.xml,launch/*,config/*}         symlinks into this checkout
#   VENV/lib/sdcpc_ros/<console script>                          symlinks to VENV/bin/<script>
#   VENV/lib/pythonX.Y/site-packages/sdcpc_ament_prefix.pth      puts VENV on AMENT_PREFIX_PATH
#
# Symlinks, not copies: an edit of a launch file or of config/ in the checkout is what the next
# `ros2 launch` runs, as with the editable Python code (a new file needs this script again, as a
# new file needs `colcon build` again). The same files as setup.py's data_files for colcon. The PyPI ROS 2 wheels lay their packages out
# under VENV (share/ament_index/...) but set no AMENT_PREFIX_PATH, which ament_index_python (and so
# every ros2 command) requires; the .pth line adds VENV to it in every Python the venv starts,
# ahead of what is already there. `pip uninstall sdcpc_ros` leaves these files; delete them by hand.
#
#   bash scripts/register_ament.sh VENV        (scripts/setup.sh runs it)
set -euo pipefail

if [[ $# -ne 1 || ! -x "$1/bin/python" ]]; then
  echo "usage: $0 VENV   (a virtual environment with sdcpc_ros installed: pip install -e .)" >&2
  exit 2
fi
VENV=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGE=sdcpc_ros

scripts=$("$VENV/bin/python" - <<'PYEOF'
from importlib.metadata import PackageNotFoundError, distribution
try:
    entry_points = distribution("sdcpc_ros").entry_points
except PackageNotFoundError:
    raise SystemExit("sdcpc_ros is not installed in this venv; first: VENV/bin/pip install -e .")
print(" ".join(sorted(e.name for e in entry_points if e.group == "console_scripts")))
PYEOF
)

index="$VENV/share/ament_index/resource_index/packages"
mkdir -p "$index" "$VENV/share/$PACKAGE" "$VENV/lib/$PACKAGE"
cp "$HERE/resource/$PACKAGE" "$index/$PACKAGE"
# Directories are real and hold one link per file, as colcon's symlink install makes them:
# `ros2 launch` looks for the file with os.walk, which does not enter a linked directory.
shopt -s nullglob
share="$VENV/share/$PACKAGE"
rm -rf "${share:?}/launch" "$share/config"  # links (or copies) of an earlier run
mkdir -p "$share/launch" "$share/config"
ln -sfn "$HERE/package.xml" "$share/package.xml"
for file in "$HERE"/launch/*.launch.py "$HERE"/config/*.yaml "$HERE"/config/*.xml; do
  ln -s "$file" "$share/$(basename "$(dirname "$file")")/$(basename "$file")"
done
for script in $scripts; do
  [[ -x "$VENV/bin/$script" ]] || { echo "error: $VENV/bin/$script is missing; reinstall: pip install -e ." >&2; exit 1; }
  ln -sfn "../../bin/$script" "$VENV/lib/$PACKAGE/$script"
done

site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
cat >"$site/sdcpc_ament_prefix.pth" <<'PTHEOF'
import os, sys; _p = os.environ.get("AMENT_PREFIX_PATH", ""); sys.prefix in _p.split(os.pathsep) or os.environ.__setitem__("AMENT_PREFIX_PATH", os.pathsep.join(filter(None, [sys.prefix, _p])))
PTHEOF

found=$("$VENV/bin/python" -c "from ament_index_python.packages import get_package_share_directory as share; print(share('$PACKAGE'))") \
  || { echo "error: $PACKAGE is laid out in $VENV but ament_index_python does not find it" >&2; exit 1; }
echo "$PACKAGE registered in the ament index of $VENV ($found; executables: $scripts)"
