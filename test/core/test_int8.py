"""INT8: the quantised graphs against torch fp32, what stays in floating point, the export cache.

The embedded SD-CPC-B0 is quantised on the fly (synthetic calibration, as the node does it) once
per runtime per test run: about a minute each on two cores.
"""

import functools
import json
import os

import cv2
import numpy as np
import pytest
import torch

from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT, save_checkpoint
from sdcpc_core.cpu import FLAGS_VARIABLE, cpu_features
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS, generate_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.export import METADATA, ExportError, export_model, read_export
from sdcpc_core.metrics import VideoMetrics
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.quantize import WEIGHT_BITS, float_nodes, has_int8, int8_files, quantize_export
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
    """The node's int8 path (the embedded model quantised on the fly, cached) against torch fp32,
    on this machine's CPU whatever its class (7-bit weights: exact without VNNI too): ≥ 99 % of
    labels equal, held-out mIoU and mVC8 within 0.01."""
    engine = StreamingSegmenter.from_checkpoint(None, device="cpu", backend=runtime, precision="int8")
    assert engine.backend == runtime and "precision int8" in engine.runtime_note
    assert has_int8(engine.runner.dir, runtime)
    (want, want_labels), (got, got_labels) = fp32_scores, _scores(engine, held_out)
    agree = np.mean([np.mean(a == b) for a, b in zip(got_labels, want_labels)])
    assert agree >= 0.99, f"{runtime} int8 labels agree with fp32 on {agree:.2%} of pixels ({cpu_features().isa})"
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


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_weights_are_overflow_safe_on_every_cpu(runtime):
    """The saved int8 graphs hold 7-bit weights (|q| ≤ 64): a CPU without VNNI sums u8×s8 pairs in
    16 bits, which 8-bit weights saturate. A property of the files, whatever CPU made them.
    OpenVINO's depthwise convolutions keep 8 bits (their kernels sum in 32 bits, no pair step)."""
    engine = StreamingSegmenter.from_checkpoint(None, device="cpu", backend=runtime, precision="int8")
    meta = json.loads((engine.runner.dir / METADATA).read_text())
    assert meta["int8"][runtime]["weight_bits"] == WEIGHT_BITS == 7
    for graph, name in int8_files(runtime).items():
        levels = _weight_levels(engine.runner.dir / name, runtime)
        # encode is mostly quantised; aggregate mostly kept in float by design (float_nodes)
        assert len(levels) > (10 if graph == "encode" else 0) and max(levels.values()) <= 64, (graph, levels)


def _weight_levels(path, runtime: str) -> dict[str, int]:
    """Largest |integer| of each int8 weight tensor of a graph (name -> level)."""
    if runtime == "onnxruntime":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        weights = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
        return {n.input[0]: int(np.abs(numpy_helper.to_array(weights[n.input[0]])).max())
                for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    import openvino as ov

    model, levels = ov.Core().read_model(str(path)), {}
    for op in model.get_ops():  # weights compressed to i8 constants (-> Convert -> Multiply -> layer)
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8":
            if _consumer(op, 3) != "GroupConvolution":  # depthwise: 8 bits, see the docstring above
                levels[op.get_friendly_name()] = int(np.abs(op.get_data().astype(np.int16)).max())
    return levels


def _consumer(op, depth: int) -> str:
    """Type of the op ``depth`` steps downstream of ``op`` along first consumers."""
    for _ in range(depth):
        targets = list(op.output(0).get_target_inputs())
        if not targets:
            break
        op = targets[0].get_node()
    return op.get_type_name()


_CAPPED_SCORER = """
import sys, numpy as np
from sdcpc_core.data.synthetic import generate_video
from sdcpc_core.engine import StreamingSegmenter
want = np.load(sys.argv[1])["labels"]
frames = generate_video({seed}, len(want), 144, 192)[0]
for d in sys.argv[2:]:
    e = StreamingSegmenter.from_checkpoint(d, device="cpu", backend="openvino", precision="int8")
    got = np.stack([e.step(f, stamp=0.1 * t).labels for t, f in enumerate(frames)])
    print("agreement", d, float(np.mean(got == want)))
"""


@pytest.mark.timeout(1800)
def test_int8_is_exact_on_a_cpu_without_vnni(tmp_path, held_out):
    """OpenVINO capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, which its CPU plugin honours: the
    instruction path of a CPU without VNNI): the 7-bit-weight graphs agree with fp32 on ≥ 99 % of
    the held-out labels. The same graphs quantised with 8-bit weights are the control that the cap
    took effect (they saturate there: 97.2 % measured)."""
    import shutil
    import subprocess
    import sys

    if "openvino" not in RUNTIMES:
        pytest.skip("OpenVINO with NNCF is not installed")
    if not cpu_features().int8_dot:
        pytest.skip(f"this CPU has no VNNI ({cpu_features().short}): "
                    "test_int8_labels_and_held_out_scores_match_fp32 runs the path natively")
    cached = StreamingSegmenter.from_checkpoint(None, device="cpu", backend="openvino", precision="int8")
    full = export_model(DEFAULT_CHECKPOINT, tmp_path / "full")  # the same model, with 8-bit weights
    quantize_export(full, runtimes=("openvino",), segmenter_cls=StreamingSegmenter, weight_bits=8)
    safe = shutil.copytree(cached.runner.dir, tmp_path / "safe")
    shutil.copy(full / "model.pt", safe / "model.pt")  # what an export directory is opened with
    frames, _ = held_out[0]
    reference = StreamingSegmenter.from_checkpoint(None, device="cpu", backend="torch")
    np.savez(tmp_path / "want.npz", labels=np.stack([reference.step(f, stamp=0.1 * t).labels
                                                     for t, f in enumerate(frames)]))
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", _CAPPED_SCORER.format(seed=HELD_OUT_SEED),
                          str(tmp_path / "want.npz"), str(safe), str(full)],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    agree = {line.split()[1]: float(line.split()[2]) for line in out.stdout.splitlines()
             if line.startswith("agreement")}
    if agree[str(full)] >= 0.99:
        pytest.skip(f"OpenVINO ignored ONEDNN_MAX_CPU_ISA=AVX2 here (8-bit weights agree on "
                    f"{agree[str(full)]:.2%}): no AVX2 path to check on this machine")
    assert agree[str(safe)] >= 0.99, f"7-bit int8 under AVX2 agrees with fp32 on {agree[str(safe)]:.2%}"


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
                                         "calibration": str(folder), "frames": 4, "weight_bits": 7}
        want = StreamingSegmenter.from_checkpoint(out, device="cpu", backend="torch")
        got = StreamingSegmenter.from_checkpoint(out, device="cpu", backend=runtime, precision="int8")
        for f in frames:
            a, b = got.step(f).labels, want.step(f).labels
            assert a.shape == b.shape == f.shape[:2]
    read_export(out)  # the directory is still a valid export


def test_auto_picks_int8_on_vnni_only_and_warns_where_int8_is_slow(tiny_checkpoint, tmp_path, monkeypatch):
    """The engine's precision auto on another CPU's flags (SDCPC_CPU_FLAGS), on an export with
    int8 graphs; the start-up line (runtime_note) names the instruction sets and why."""
    if "openvino" not in RUNTIMES:
        pytest.skip("OpenVINO with NNCF is not installed (auto picks int8 on OpenVINO only)")
    out = export_model(tiny_checkpoint, tmp_path / "int8")
    quantize_export(out, runtimes=("openvino",), frames=2, segmenter_cls=StreamingSegmenter)
    open_ = functools.partial(StreamingSegmenter.from_checkpoint, out, device="cpu", backend="openvino")
    monkeypatch.setenv(FLAGS_VARIABLE, "avx2 avx512f avx512_vnni")  # no bf16
    vnni = open_()
    assert vnni.precision == "int8" and "AVX2, AVX-512, VNNI" in vnni.runtime_note
    assert vnni.precision_warning is None
    monkeypatch.setenv(FLAGS_VARIABLE, "avx2 fma")
    avx2 = open_()
    assert avx2.precision == "fp32" and "without VNNI" in avx2.runtime_note and avx2.precision_warning is None
    asked = open_(precision="int8")
    assert asked.precision == "int8" and "not faster than fp32" in asked.precision_warning
    raw = json.loads((out / METADATA).read_text())  # int8 graphs made before weights had 7 bits
    del raw["int8"]["openvino"]["weight_bits"]
    (out / METADATA).write_text(json.dumps(raw))
    old = open_(precision="int8")
    assert "8-bit weights, which saturate" in old.precision_warning and "re-export" in old.precision_warning


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
