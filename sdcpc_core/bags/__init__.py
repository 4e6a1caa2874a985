"""rosbag2 (mcap, sqlite3) through ``rosbags`` only, no rclpy needed.

- :mod:`~sdcpc_core.bags.messages`: type store, topic defaults, stamps, :func:`image_message`;
- :mod:`~sdcpc_core.bags.writer`: :func:`write_bag` (frames -> bag);
- :mod:`~sdcpc_core.bags.sources`: frames from image folders, videos, VSPW, Cityscapes, synthetic;
- :mod:`~sdcpc_core.bags.reader`: :class:`BagReader`;
- :mod:`~sdcpc_core.bags.mcap_salvage`: messages before the damage of a truncated MCAP file.
"""

from sdcpc_core.bags.messages import (
    DEFAULT_FRAME_ID,
    DEFAULT_IMAGE_TOPIC,
    DEFAULT_LABEL_TOPIC,
    DEFAULT_START_STAMP,
    DEFAULT_VIDEO_GAP,
    IMAGE_TYPE,
    TYPESTORE,
    BagError,
    format_stamp,
    image_message,
    stamp_to_ns,
)
from sdcpc_core.bags.reader import BagDamaged, BagMessage, BagReader, TopicInfo
from sdcpc_core.bags.sources import (
    cityscapes_frames,
    image_folder_frames,
    synthetic_frames,
    video_file_frames,
    vspw_frames,
)
from sdcpc_core.bags.writer import STORAGES, BagSummary, SourceFrame, write_bag

__all__ = [
    "DEFAULT_FRAME_ID", "DEFAULT_IMAGE_TOPIC", "DEFAULT_LABEL_TOPIC", "DEFAULT_START_STAMP",
    "DEFAULT_VIDEO_GAP", "IMAGE_TYPE", "STORAGES", "TYPESTORE", "BagDamaged", "BagError",
    "BagMessage", "BagReader", "BagSummary", "SourceFrame", "TopicInfo", "cityscapes_frames",
    "format_stamp", "image_folder_frames", "image_message", "stamp_to_ns", "synthetic_frames",
    "video_file_frames", "vspw_frames", "write_bag",
]
