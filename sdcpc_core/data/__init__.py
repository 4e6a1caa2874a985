"""Datasets: synthetic driving video, VSPW, Cityscapes sequences; the clip convention.

Every dataset yields the dict described in :mod:`sdcpc_core.data.clips`.
"""

from sdcpc_core.data.cityscapes import CityscapesSequenceClips
from sdcpc_core.data.clips import (
                                   IMAGENET_MEAN,
                                   IMAGENET_STD,
                                   ClipAugment,
                                   ClipDataset,
                                   EvalTransform,
                                   make_item,
                                   reference_indices,
)
from sdcpc_core.data.synthetic import (
                                   SYNTHETIC_LABELS,
                                   SyntheticClips,
                                   SyntheticOptions,
                                   SyntheticVideo,
                                   generate_video,
                                   iter_video,
)
from sdcpc_core.data.vspw import VSPW_LABELS, VSPWClips, shift_vspw_labels

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "SYNTHETIC_LABELS", "VSPW_LABELS", "CityscapesSequenceClips",
    "ClipAugment", "ClipDataset", "EvalTransform", "SyntheticClips", "SyntheticOptions",
    "SyntheticVideo", "VSPWClips", "generate_video", "iter_video", "make_item",
    "reference_indices", "shift_vspw_labels",
]
