"""sdcpc_ros: the ROS 2 adapter around :mod:`sdcpc_core` (node, message conversions, bags)."""
