"""INT8: the quantised graphs against torch fp32, what stays in floating point, the export cache.

The embedded SD-CPC-B0 is quantised on the fly (synthetic calibration, as the node does it) once
per runtime per test run: about a minute each on two cores.
"""

import json

import cv2
import numpy as np
import pytest
import torch

from sdcpc_core.checkpoints import save_checkpoint
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS, generate_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.export import METADATA, ExportError, export_model, read_export
from sdcpc_core.metrics import VideoMetrics
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.quantize import float_nodes, has_int8, int8_files
from sdcpc_core.runtimes import installed
from sdcpc_core.settings import SettingError

pytest.importorskip("onnx", reason="the deploy runtimes are installed by scripts/setup.sh")
HELD_OUT_SEED = 5000  # the embedded models' held-out videos (sdcpc_core/assets/TRAINING_REPORT.md)
RUNTIMES = [r for r in ("openvino", "onnxruntime") if installed(r)
            and (r != "openvino" or installed("nncf"))]
if not RUNTIMES:
    pytest.skip("neither OpenVINO (with NNCF) nor ONNX Runtime is installed", allow_module_level=True)


@pytest.fixture(scope="module")
def held_out():
    return [generate_video(HELD_OUT_SEED + i, 32, 144, 192) for i in range(2)]


def _scores(engine, videos):
    metrics, labels = VideoMetrics(engine.labels.num_classes), []
    for v, (frames, gt) in enumerate(videos):
        engine.reset()
        metrics.start_video(str(v))
        for t, (frame, truth) in enumerate(zip(frames, gt)):
            pred = engine.step(frame, stamp=0.1 * t).labels
            metrics.update(pred, truth)
            labels.append(pred)
        metrics.end_video()
    return metrics.compute(), labels


@pytest.fixture(scope="module")
def fp32_scores(held_out):
    return _scores(StreamingSegmenter.from_checkpoint(None, device="cpu", backend="torch"), held_out)


@pytest.mark.timeout(1800)  # exports and quantises the embedded model first: minutes on a loaded CPU
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_labels_and_held_out_scores_match_fp32(held_out, fp32_scores, runtime):
    """The node's int8 path (the embedded model quantised on the fly, cached) against torch fp32:
    ≥ 98.5 % of labels equal, held-out mIoU and mVC8 within 0.01."""
    engine = StreamingSegmenter.from_checkpoint(None, device="cpu", backend=runtime, precision="int8")
    assert engine.backend == runtime and "precision int8" in engine.runtime_note
    assert has_int8(engine.runner.dir, runtime)
    (want, want_labels), (got, got_labels) = fp32_scores, _scores(engine, held_out)
    agree = np.mean([np.mean(a == b) for a, b in zip(got_labels, want_labels)])
    assert agree >= 0.985, f"{runtime} int8 labels agree with fp32 on {agree:.2%} of pixels"
    for metric in ("miou", "mvc8"):
        assert abs(got[metric] - want[metric]) <= 0.01, (metric, got[metric], want[metric])


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_keeps_the_class_logits_and_the_selection_in_float(runtime):
    """No quantised tensor feeds what the labels and the fine stage's selection are computed from."""
    engine = StreamingSegmenter.from_checkpoint(None, device="cpu", backend=runtime, precision="int8")
    export = engine.runner.dir
    for graph, name in int8_files(runtime).items():
        keep = float_nodes(export / f"{graph}.onnx", engine.labels.num_classes)
        reasons = set(keep.values())
        assert "class logits" in reasons and (graph == "encode" or "fine-stage selection" in reasons)
        if runtime == "onnxruntime":
            import onnx

            g = onnx.load(str(export / name)).graph
            producer = {o: n.op_type for n in g.node for o in n.output}
            fed = {n.name: [producer.get(i) for i in n.input] for n in g.node if n.name in keep}
            assert fed and all("DequantizeLinear" not in ops for ops in fed.values()), fed
            assert sum(n.op_type == "QuantizeLinear" for n in g.node) > 10  # the rest is int8
        else:
            import openvino as ov

            model = ov.Core().read_model(str(export / name))
            ops = [op for op in model.get_ops() if op.get_friendly_name().split("/")[0] in keep]
            inputs = [i.get_source_output().get_node().get_type_name() for op in ops for i in op.inputs()]
            assert ops and "FakeQuantize" not in inputs
            assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) > 10


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = SDCPCConfig(variant="b0", num_classes=9, embed_dim=16, reference_offsets=(-2, -1), window=3)
    return save_checkpoint(tmp_path / "tiny.pt", build_model(cfg), cfg, SYNTHETIC_LABELS, input_size=(64, 64))


def test_int8_is_refused_where_it_cannot_run(tiny_checkpoint, tmp_path, monkeypatch):
    with pytest.raises(SettingError, match="backend torch runs fp32, bf16 or fp16"):
        StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend="torch", precision="int8")
    # a checkpoint of the user's: calibration needs frames of its scenes, refused before any export
    import sdcpc_core.export

    monkeypatch.setattr(sdcpc_core.export, "export_module", lambda *a, **k: pytest.fail("exported"))
    with pytest.raises(SettingError, match="--int8 --calibration"):
        StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend=RUNTIMES[0], precision="int8")
    monkeypatch.undo()
    plain = export_model(tiny_checkpoint, tmp_path / "plain")
    with pytest.raises(ExportError, match="has no int8 graphs .* --int8 --calibration"):
        StreamingSegmenter.from_checkpoint(plain, device="cpu", backend=RUNTIMES[0], precision="int8")


def test_export_cli_int8_from_an_image_folder(tiny_checkpoint, tmp_path, capsys):
    from sdcpc_core.cli import main as sdcpc_main

    out = tmp_path / "int8"
    # a user's checkpoint needs calibration frames; nothing is written without them
    assert sdcpc_main(["export", str(tiny_checkpoint), "-o", str(out), "--int8"]) == 2
    assert "--int8 needs --calibration SOURCE" in capsys.readouterr().err and not out.exists()
    assert sdcpc_main(["export", str(tiny_checkpoint), "-o", str(out), "--int8", "--calibration",
                       str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err and not out.exists()
    folder = tmp_path / "frames"
    folder.mkdir()
    frames, _ = generate_video(3, 6, 72, 96)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    assert sdcpc_main(["export", str(tiny_checkpoint), "-o", str(out), "--int8", "--calibration", str(folder),
                       "--calibration-frames", "4"]) == 0
    assert "int8 graphs for" in capsys.readouterr().out
    meta = json.loads((out / METADATA).read_text())
    for runtime in RUNTIMES:
        assert meta["int8"][runtime] == {"files": list(int8_files(runtime).values()),
                                         "calibration": str(folder), "frames": 4}
        want = StreamingSegmenter.from_checkpoint(out, device="cpu", backend="torch")
        got = StreamingSegmenter.from_checkpoint(out, device="cpu", backend=runtime, precision="int8")
        for f in frames:
            a, b = got.step(f).labels, want.step(f).labels
            assert a.shape == b.shape == f.shape[:2]
    read_export(out)  # the directory is still a valid export


def test_a_second_engine_reuses_the_cached_export(tiny_checkpoint, tmp_path, monkeypatch):
    """The export a plain checkpoint needs is made once per checkpoint content, runtime, graph
    precision and input size; a second start reads it back without exporting."""
    monkeypatch.setenv("SDCPC_CACHE_DIR", str(tmp_path / "cache"))
    runtime = RUNTIMES[-1]
    heard = []
    first = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend=runtime,
                                               export_progress=heard.append)
    assert "exported now in" in first.runtime_note and heard
    import sdcpc_core.export

    monkeypatch.setattr(sdcpc_core.export, "export_module", lambda *a, **k: pytest.fail("exported again"))
    second = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend=runtime)
    assert "cached export" in second.runtime_note and second.runner.dir == first.runner.dir
    frame = generate_video(1, 1, 64, 64)[0][0]
    np.testing.assert_array_equal(first.step(frame).labels, second.step(frame).labels)
    monkeypatch.undo()
    monkeypatch.setenv("SDCPC_CACHE_DIR", str(tmp_path / "cache"))
    other_size = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend=runtime,
                                                    input_size=[96, 64])
    assert other_size.runner.dir != first.runner.dir and "exported now" in other_size.runtime_note
    torch.manual_seed(1)  # another checkpoint (other weights) at the same path: another entry
    cfg = SDCPCConfig(variant="b0", num_classes=9, embed_dim=16, reference_offsets=(-2, -1), window=3)
    save_checkpoint(tiny_checkpoint, build_model(cfg), cfg, SYNTHETIC_LABELS, input_size=(64, 64))
    changed = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", backend=runtime)
    assert changed.runner.dir != first.runner.dir


def test_auto_says_why_it_runs_torch_without_an_input_size(tmp_path):
    torch.manual_seed(0)
    cfg = SDCPCConfig(variant="b0", num_classes=9, embed_dim=16, reference_offsets=(-2, -1), window=3)
    path = save_checkpoint(tmp_path / "sizeless.pt", build_model(cfg), cfg, SYNTHETIC_LABELS)
    engine = StreamingSegmenter.from_checkpoint(path, device="cpu", backend="auto")
    assert engine.backend == "torch" and "fixed input size" in engine.runtime_note
