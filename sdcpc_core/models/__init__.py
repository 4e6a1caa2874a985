"""Network pieces: MiT encoder, SegFormer head, SD-CPC temporal modules, the two models."""

from sdcpc_core.models.head import SegFormerHead
from sdcpc_core.models.mit import MIT_SPECS, MiTSpec, MixVisionTransformer
from sdcpc_core.models.sdcpc import SDCPC, SDCPCConfig, SegFormer, build_model
from sdcpc_core.models.temporal import DSSA, SSEA, FrameCache, static_difference

__all__ = ["MIT_SPECS", "MiTSpec", "DSSA", "SSEA", "SDCPC", "FrameCache", "MixVisionTransformer", "SDCPCConfig",
           "SegFormer", "SegFormerHead", "build_model", "static_difference"]
