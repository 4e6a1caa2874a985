"""``sdcpc adapt``: SD-CPC's temporal modules learnt on unlabelled video by self-training."""

from sdcpc_core.adapt.method import Recipe
from sdcpc_core.adapt.run import AdaptError, AdaptInterrupted, AdaptOptions, run_adapt

__all__ = ["AdaptError", "AdaptInterrupted", "AdaptOptions", "Recipe", "run_adapt"]
