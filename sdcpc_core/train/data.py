"""Training and validation datasets from ``DataConfig``: synthetic, VSPW or Cityscapes sequences."""

from __future__ import annotations

from sdcpc_core.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CityscapesSequenceClips,
    ClipAugment,
    SyntheticClips,
    VSPWClips,
)
from sdcpc_core.train.config import TrainConfig

DATASETS = {"synthetic": SyntheticClips, "vspw": VSPWClips, "cityscapes": CityscapesSequenceClips}


def build_datasets(cfg: TrainConfig):
    """(train_set, val_set, labels, mean, std).

    Training clips get ``ClipAugment`` (one random draw per clip); validation clips are whole
    frames. ``data.options`` go to the dataset class, ``data.val_options`` override them for
    validation; file datasets also get ``root`` and the split.
    """
    d = cfg.data
    if d.dataset not in DATASETS:
        raise ValueError(f"data.dataset {d.dataset!r} is not one of {sorted(DATASETS)}")
    cls = DATASETS[d.dataset]
    offsets = cfg.model.reference_offsets if cfg.model.temporal else ()
    augment = ClipAugment(d.crop_size, d.scale_range, flip_prob=0.5 if d.flip else 0.0,
                          photometric=d.photometric, cat_max_ratio=d.cat_max_ratio,
                          ignore_index=cfg.loss.ignore_index)
    train_kw, val_kw = dict(d.options), {**d.options, **d.val_options}
    if d.dataset != "synthetic":
        if not d.root:
            raise ValueError(f"data.root must name the {d.dataset} folder")
        train_kw.update(root=d.root, split=d.train_split)
        val_kw.update(root=d.root, split=d.val_split)
    train = cls(reference_offsets=offsets, transform=augment, **train_kw)
    val = cls(reference_offsets=offsets, **val_kw)
    if train.labels.num_classes != cfg.model.num_classes:
        raise ValueError(f"the {d.dataset} label set has {train.labels.num_classes} classes but "
                         f"model.num_classes is {cfg.model.num_classes}")
    return train, val, train.labels, IMAGENET_MEAN, IMAGENET_STD
