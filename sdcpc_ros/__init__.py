"""sdcpc_ros: the ROS 2 adapter around :mod:`sdcpc_core` (node, message conversions, bags)."""

from sdcpc_core.openmp import sleep_when_idle

# Before anything imports PyTorch: the node's network runs in a graph runtime (OpenVINO by default
# on a CPU), and PyTorch's spinning OpenMP threads would hold its cores (sdcpc_core.openmp).
sleep_when_idle()
