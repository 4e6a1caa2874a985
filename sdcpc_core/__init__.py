"""sdcpc_core: SD-CPC video semantic segmentation without ROS.

The network (MiT backbone, SegFormer head, SD-CPC temporal modules), the window-attention op,
the streaming engine, losses, metrics, datasets, training, checkpoints and the CLI.
Importing this package never imports rclpy or ROS messages.
"""

__version__ = "0.1.0"
