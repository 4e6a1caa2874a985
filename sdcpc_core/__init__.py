"""sdcpc_core: SD-CPC video semantic segmentation without ROS.

The network (MiT backbone, SegFormer head, SD-CPC temporal modules), the window-attention op,
the streaming engine, losses, metrics, datasets, training, checkpoints and the CLI.
Importing this package never imports rclpy or ROS messages.
"""

import sys

__version__ = "0.1.0"

# No OpenVINO telemetry: ``openvino.convert_model`` (our IR export) sends usage events through
# openvino_telemetry, which starts a multiprocessing.Process (fork) from a ThreadPoolExecutor
# thread for each one. A fork from a non-main thread of a process running numba's TBB pool,
# OpenMP and DDS threads is what numba warns about ("Attempted to fork from a non-main thread,
# the TBB library may be in an invalid state in the child process"), and the child then blocks
# in an HTTP request on a robot without internet. OpenVINO falls back to its own no-op stub
# when the module cannot be imported (openvino/tools/ovc/telemetry_utils.py). Where openvino
# was imported before sdcpc_core, this has no effect.
sys.modules.setdefault("openvino_telemetry", None)
