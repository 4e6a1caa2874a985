"""``sdcpc-eval quantize BAG DIR``: a bag's images calibrate an export directory's int8 graphs."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the deploy runtimes are installed by scripts/setup.sh")

from sdcpc_core.checkpoints import save_checkpoint  # noqa: E402
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS  # noqa: E402
from sdcpc_core.engine import StreamingSegmenter  # noqa: E402
from sdcpc_core.export import METADATA, export_model  # noqa: E402
from sdcpc_core.models import SDCPCConfig, build_model  # noqa: E402
from sdcpc_ros.evaluation.cli import main as eval_main  # noqa: E402


def test_a_bag_calibrates_the_int8_graphs(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = SDCPCConfig(variant="b0", num_classes=9, embed_dim=16, reference_offsets=(-2, -1), window=3)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model(cfg), cfg, SYNTHETIC_LABELS, input_size=(64, 64))
    export = export_model(ckpt, tmp_path / "export")
    bag = tmp_path / "clip.bag"
    assert eval_main(["convert", "synthetic", str(bag), "--videos", "1", "--length", "5",
                      "--size", "48", "64"]) == 0
    assert eval_main(["quantize", str(bag), str(export), "--image-topic", "/nothing"]) == 2
    assert "has no topic /nothing" in capsys.readouterr().err
    assert eval_main(["quantize", str(bag), str(export), "--frames", "3"]) == 0
    meta = json.loads((export / METADATA).read_text())
    assert meta["int8"]["onnxruntime"]["frames"] == 3
    engine = StreamingSegmenter.from_checkpoint(export, device="cpu", backend="onnxruntime", precision="int8")
    frame = torch.zeros(48, 64, 3, dtype=torch.uint8).numpy()
    assert engine.step(frame).labels.shape == (48, 64)
