"""Training and validation datasets from ``DataConfig``: synthetic, VSPW or Cityscapes sequences."""

from __future__ import annotations

from sdcpc_core.data.clips import IMAGENET_MEAN, IMAGENET_STD, ClipAugment
from sdcpc_core.train.config import TrainConfig

DATASETS = ("synthetic", "vspw", "cityscapes")


def build_datasets(cfg: TrainConfig):
    """(train_set, val_set, labels, mean, std). Train clips get ``ClipAugment``; validation clips
    are whole frames. ``data.options`` go to the dataset class, ``data.val_options`` override them."""
    d, offsets = cfg.data, cfg.model.reference_offsets if cfg.model.temporal else ()
    augment = ClipAugment(d.crop_size, d.scale_range, flip_prob=0.5 if d.flip else 0.0,
                          photometric=d.photometric, cat_max_ratio=d.cat_max_ratio,
                          ignore_index=cfg.loss.ignore_index)
    val_options = {**d.options, **d.val_options}
    if d.dataset == "synthetic":
        from sdcpc_core.data.synthetic import SYNTHETIC_LABELS, SyntheticClips

        train = SyntheticClips(reference_offsets=offsets, transform=augment, **d.options)
        val = SyntheticClips(reference_offsets=offsets, **val_options)
        labels = SYNTHETIC_LABELS
    else:
        raise ValueError(f"data.dataset {d.dataset!r} is not one of {DATASETS}")
    if labels.num_classes != cfg.model.num_classes:
        raise ValueError(f"the {d.dataset} label set has {labels.num_classes} classes but "
                         f"model.num_classes is {cfg.model.num_classes}")
    return train, val, labels, IMAGENET_MEAN, IMAGENET_STD
