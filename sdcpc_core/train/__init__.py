"""Training: config dataclasses + YAML, AdamW/poly schedule, the (DDP-capable) trainer.

``python -m sdcpc_core.train CONFIG [--set key=value ...]`` (also under ``torchrun``).
"""

from sdcpc_core.train.config import TrainConfig, config_from_dict, load_config
from sdcpc_core.train.optim import WarmupPoly, build_optimizer, build_scheduler
from sdcpc_core.train.trainer import Trainer, add_train_arguments, run_training

__all__ = ["TrainConfig", "Trainer", "WarmupPoly", "add_train_arguments", "build_optimizer",
           "build_scheduler", "config_from_dict", "load_config", "run_training"]
