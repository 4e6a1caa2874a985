"""Write the mmsegmentation 1.x reference the mmseg converter is tested against (test/data/).

mmsegmentation 1.2.2 needs mmcv < 2.2, whose only CPU install here is ``mmcv-lite==2.1.0``, which
pulls ``opencv-python`` (it would clash with the project's opencv-python-headless) and lacks mmcv's
compiled ops. So this runs in its own virtual environment, once, and CI compares against what it
wrote::

    python3 -m venv /tmp/mmvenv
    /tmp/mmvenv/bin/pip install torch==2.13.0 mmcv-lite==2.1.0 mmengine mmsegmentation==1.2.2 ftfy regex
    /tmp/mmvenv/bin/python scripts/mmseg_reference.py test/data

The SegFormer modules use no compiled op; ``mmcv.ops`` (imported by unrelated mmseg modules) is
replaced by an empty module before mmseg loads. The network is mmsegmentation's own
``MixVisionTransformer`` + ``SegformerHead`` (what ``EncoderDecoder`` holds as ``backbone`` and
``decode_head``), random weights with non-trivial norms and batch-norm statistics, head counts
other than the published ones (read back from the checkpoint's ``meta.cfg``).
"""

import sys
import types
from pathlib import Path

import torch

HEADS = [1, 2, 4, 8]
EMBED = 16  # stage widths 16, 32, 64, 128
CFG = f"""model = dict(
    type='EncoderDecoder',
    backbone=dict(type='MixVisionTransformer', in_channels=3, embed_dims={EMBED}, num_stages=4,
                  num_layers=[1, 2, 1, 1], num_heads={HEADS}, patch_sizes=[7, 3, 3, 3],
                  sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3), mlp_ratio=4),
    decode_head=dict(type='SegformerHead', in_channels=[16, 32, 64, 128], in_index=[0, 1, 2, 3],
                     channels=48, num_classes=5, align_corners=False))
"""


def main(out_dir: str) -> None:
    def missing_op(name):  # compiled ops SegFormer never calls
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})

    ops = types.ModuleType("mmcv.ops")
    ops.__getattr__ = missing_op
    sys.modules["mmcv.ops"] = ops
    import mmseg
    from mmseg.models.backbones import MixVisionTransformer
    from mmseg.models.decode_heads import SegformerHead

    torch.manual_seed(7)
    backbone = MixVisionTransformer(in_channels=3, embed_dims=EMBED, num_stages=4, num_layers=[1, 2, 1, 1],
                                    num_heads=HEADS, patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
                                    out_indices=(0, 1, 2, 3), mlp_ratio=4)
    head = SegformerHead(in_channels=[16, 32, 64, 128], in_index=[0, 1, 2, 3], channels=48, num_classes=5,
                         norm_cfg=dict(type="BN", requires_grad=True), align_corners=False)
    with torch.no_grad():
        for module in list(backbone.modules()) + list(head.modules()):
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0.0, 0.1)
    backbone.eval()
    head.eval()
    image = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        logits = head(backbone(image))  # (2, 5, 24, 32)
    state = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
             **{f"decode_head.{k}": v for k, v in head.state_dict().items()}}
    classes = ["road", "person", "car", "tree", "sky"]
    palette = [[128, 64, 128], [220, 20, 60], [0, 0, 142], [107, 142, 35], [70, 130, 180]]
    meta = {"mmseg_version": mmseg.__version__, "cfg": CFG,
            "dataset_meta": {"classes": classes, "palette": palette}}
    out = Path(out_dir)
    torch.save({"meta": meta, "state_dict": state}, out / "mmseg_segformer_tiny.pth")
    torch.save({"image": image, "logits": logits, "mmseg_version": mmseg.__version__},
               out / "mmseg_segformer_tiny_reference.pt")
    print(f"wrote {out}/mmseg_segformer_tiny.pth and its reference logits {tuple(logits.shape)} "
          f"(mmsegmentation {mmseg.__version__})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "test/data")
