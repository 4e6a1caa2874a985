"""Exported graphs on ONNX Runtime and OpenVINO against eager torch, and refused exports.

The embedded SD-CPC-B0 and per-frame baseline are exported once per session (about a minute
each on two cores). GPU execution providers cannot run here: scripts/gpu_check.sh runs them.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from sdcpc_core.checkpoints import BASELINE_CHECKPOINT, DEFAULT_CHECKPOINT, CheckpointError
from sdcpc_core.cpu import cpu_features
from sdcpc_core.data.synthetic import generate_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.export import METADATA, ExportError, export_model, read_export
from sdcpc_core.runtimes import installed, openvino_offers
from sdcpc_core.settings import IMAGENET_MEAN, SettingError

pytest.importorskip("onnx", reason="the deploy runtimes are installed by scripts/setup.sh")
MODELS = {"sdcpc": DEFAULT_CHECKPOINT, "segformer": BASELINE_CHECKPOINT}
# Both runtimes sum in other orders than torch (logits differ by ~1e-5). The baseline is exported
# with OpenVINO IR too, so the IR's weights are held to the same tolerance (IR saved with fp16
# weights, OpenVINO's default, differed by 1e-3 on the baseline and 4e-3 on SD-CPC).
LOGIT_TOLERANCE = {"onnxruntime": 1e-4, "openvino": 1e-4}
LABEL_FLIPS = {"onnxruntime": 0.0, "openvino": 1e-4}  # fraction of pixels: exact ties may flip


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {name: export_model(path, root / name, openvino=(name == "segformer"))
            for name, path in MODELS.items()}


@pytest.fixture(scope="module")
def clip():
    frames, _ = generate_video(7, 8, 120, 160)
    return frames


def _recording(engine):
    """Record the logits of every aggregate call of the engine's runner."""
    logits, aggregate = [], engine.runner.aggregate

    def record(current, refs):
        out = aggregate(current, refs)
        logits.append(out.clone())
        return out

    engine.runner.aggregate = record
    return logits


def _stream(engine, frames):
    """Frames 0-4, a reset, frames 5-7 (with stamps): labels of every step."""
    labels = []
    for i, f in enumerate(frames):
        if i == 5:
            engine.reset()
        labels.append(engine.step(f, stamp=0.1 * i).labels)
    return labels


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("model", list(MODELS))
def test_backend_streams_like_eager_torch(exports, clip, model, backend):
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    want = StreamingSegmenter.from_checkpoint(exports[model], device="cpu", backend="torch")
    got = StreamingSegmenter.from_checkpoint(exports[model], device="cpu", backend=backend, precision="fp32")
    assert got.backend == backend and got.input_size == want.input_size
    want_logits, got_logits = _recording(want), _recording(got)
    want_labels, got_labels = _stream(want, clip), _stream(got, clip)
    for a, b in zip(got_logits, want_logits):
        torch.testing.assert_close(a, b, atol=LOGIT_TOLERANCE[backend], rtol=1e-4)
    assert len(got_logits) == len(clip)
    # clip mode (every target re-encodes its references) runs through the same graphs
    clip_labels = [r.labels for r in got.segment_clip(clip[:4])]
    for a, b in zip(got_labels + clip_labels, want_labels + want_labels[:4]):
        differ = np.mean(a != b)  # only exact near-ties of the resized logits may flip
        assert differ <= LABEL_FLIPS[backend], f"{differ:.4%} of labels differ from eager torch"


def test_a_checkpoint_runs_on_another_backend_through_an_export_made_on_the_fly(clip):
    """What the node and ``sdcpc-eval --backend onnxruntime`` do with a plain checkpoint."""
    if not installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed")
    want = StreamingSegmenter.from_checkpoint(BASELINE_CHECKPOINT, device="cpu", backend="torch")
    got = StreamingSegmenter.from_checkpoint(BASELINE_CHECKPOINT, device="cpu", backend="onnxruntime")
    assert got.backend == "onnxruntime" and got.input_size == want.input_size
    meta = read_export(got.runner.dir)
    assert meta["mean"] == pytest.approx(got.settings.mean or IMAGENET_MEAN)
    for a, b in zip(_stream(got, clip[:3]), _stream(want, clip[:3])):
        assert np.mean(a != b) <= LABEL_FLIPS["onnxruntime"]


def test_exported_graphs_take_other_references_than_the_trace(exports):
    """The graph must read every reference input (an exporter that merged aliased inputs did not)."""
    meta = read_export(exports["sdcpc"])
    engine = StreamingSegmenter.from_checkpoint(exports["sdcpc"], device="cpu", backend="onnxruntime")
    g = torch.Generator().manual_seed(0)
    caches = [engine.runner.encode(torch.randn(1, 3, *meta["input_size"], generator=g)) for _ in range(4)]
    a = engine.runner.aggregate(caches[0], caches[1:])
    b = engine.runner.aggregate(caches[0], [caches[0]] * 3)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("model", list(MODELS))
def test_bf16_labels_agree_with_fp32(exports, clip, model):
    backends = ["torch"] + (["openvino"] if _openvino_bf16() else [])
    fp32 = StreamingSegmenter.from_checkpoint(exports[model], device="cpu", backend="torch")
    want = _stream(fp32, clip)
    for backend in backends:
        bf16 = StreamingSegmenter.from_checkpoint(exports[model], device="cpu", backend=backend,
                                                  precision="bf16")
        got = _stream(bf16, clip)
        agree = np.mean([np.mean(a == b) for a, b in zip(got, want)])
        assert agree >= 0.995, f"{backend} bf16 labels agree with fp32 on {agree:.2%} of pixels"


def _openvino_bf16() -> bool:
    # both OpenVINO and the CPU flags (SDCPC_CPU_FLAGS under an emulated CPU, whose capped oneDNN
    # has no bf16 kernels while OpenVINO still reads the real CPU's capabilities)
    return installed("openvino") and openvino_offers("bf16") and cpu_features().bf16_dot


def test_openvino_bf16_refused_where_the_cpu_lacks_it(exports):
    if not installed("openvino") or openvino_offers("bf16"):
        pytest.skip("OpenVINO offers bf16 on this CPU (test_bf16_labels_agree_with_fp32 covers it)")
    with pytest.raises(SettingError, match="precision.*BF16"):
        StreamingSegmenter.from_checkpoint(exports["sdcpc"], device="cpu", backend="openvino",
                                           precision="bf16")


def test_onnxruntime_refuses_bf16_on_cpu(exports):
    with pytest.raises(SettingError, match="onnxruntime runs fp32"):
        StreamingSegmenter.from_checkpoint(exports["segformer"], device="cpu", backend="onnxruntime",
                                           precision="bf16")


@pytest.mark.parametrize("backend, precision, words", [
    ("onnxruntime", "bf16", "onnxruntime runs fp32"),
    ("onnxruntime", "fp16", "onnxruntime runs fp32"),  # fp16 needs TensorRT, absent on a CPU
    ("openvino", "fp16_or_bf16_missing", "this CPU offers OpenVINO"),
])
def test_a_refused_precision_costs_no_export(monkeypatch, backend, precision, words):
    """From a plain checkpoint, a backend × precision that cannot run is refused before the model
    is exported (tens of seconds on a small CPU), not after."""
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    if precision == "fp16_or_bf16_missing":
        missing = [p for p in ("bf16", "fp16") if not openvino_offers(p)]
        if not missing:
            pytest.skip("this CPU offers OpenVINO both bf16 and fp16")
        precision = missing[0]
    from sdcpc_core import export

    def no_export(*args, **kwargs):
        raise AssertionError("exported before the setting was checked")

    monkeypatch.setattr(export, "export_module", no_export)
    with pytest.raises(SettingError, match=words):
        StreamingSegmenter.from_checkpoint(BASELINE_CHECKPOINT, device="cpu", backend=backend,
                                           precision=precision)


def test_wrong_input_size_is_refused(exports):
    with pytest.raises(SettingError, match=r"input_size.*takes \[144, 192\] only"):
        StreamingSegmenter.from_checkpoint(exports["segformer"], device="cpu", backend="onnxruntime",
                                           input_size=(96, 128))


def test_wrong_number_of_references_is_refused(exports):
    with pytest.raises(SettingError, match="aggregates 3 references"):
        StreamingSegmenter.from_checkpoint(exports["sdcpc"], device="cpu", backend="onnxruntime",
                                           reference_offsets=(-2, -1))


@pytest.mark.parametrize("damaged, backend, words", [
    ("encode.onnx", "onnxruntime", r"encode.onnx is not a readable ONNX graph .*re-export"),
    ("aggregate.onnx", "openvino", r"aggregate.onnx is not a readable ONNX graph .*re-export"),
    ("encode.xml", "openvino", r"OpenVINO cannot load .*encode.xml \(.*\); re-export"),
    ("aggregate.bin", "openvino", r"OpenVINO cannot load .*aggregate.xml \(.*\); re-export"),
])
def test_a_truncated_graph_file_is_refused_naming_it(exports, tmp_path, damaged, backend, words):
    """A copy cut short (a full disk, an interrupted scp) is an ExportError naming the file and
    what to do, never a runtime's parser traceback."""
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    broken = shutil.copytree(exports["segformer"], tmp_path / "broken")
    with open(broken / damaged, "r+b") as f:
        f.truncate(min(1000, (broken / damaged).stat().st_size // 2))
    with pytest.raises(ExportError, match=words):
        StreamingSegmenter.from_checkpoint(broken, device="cpu", backend=backend)


def test_an_onnxruntime_session_that_fails_is_refused_naming_the_graph(exports, monkeypatch):
    if not installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed")
    import onnxruntime as ort

    def fail(path, *args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model failed")

    monkeypatch.setattr(ort, "InferenceSession", fail)
    with pytest.raises(ExportError, match=r"ONNX Runtime cannot load .*encode.onnx \(.*INVALID_GRAPH"):
        StreamingSegmenter.from_checkpoint(exports["segformer"], device="cpu", backend="onnxruntime")


def test_missing_file_is_refused(exports, tmp_path):
    broken = shutil.copytree(exports["segformer"], tmp_path / "broken")
    (broken / "aggregate.onnx").unlink()
    with pytest.raises(ExportError, match="lacks aggregate.onnx"):
        StreamingSegmenter.from_checkpoint(broken, device="cpu", backend="onnxruntime")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="not an sdcpc export directory"):
        read_export(tmp_path / "empty")


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(input_size=[96, 128]), "input 'image' has shape"),
    (lambda m: m["config"].update(num_classes=5), "classes but the config has"),
    (lambda m: m.update(num_references=2), "inputs .* do not match the metadata"),
    (lambda m: m.update(version=99), "re-export with this sdcpc"),
])
def test_mismatched_metadata_is_refused(exports, tmp_path, edit, message):
    broken = shutil.copytree(exports["sdcpc"], tmp_path / "broken")
    meta = json.loads((broken / METADATA).read_text())
    edit(meta)
    (broken / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=message):
        StreamingSegmenter.from_checkpoint(broken, device="cpu", backend="onnxruntime")


def test_checkpoint_not_matching_the_graphs_is_refused(exports, tmp_path):
    broken = shutil.copytree(exports["sdcpc"], tmp_path / "broken")
    shutil.copyfile(BASELINE_CHECKPOINT, broken / "model.pt")
    with pytest.raises(CheckpointError, match="describe different models"):
        StreamingSegmenter.from_checkpoint(broken, device="cpu", backend="torch")


def test_export_cli_and_metadata(exports):
    meta = read_export(exports["segformer"])
    assert meta["input_size"] == [144, 192] and meta["labels"].num_classes == 9
    assert meta["mean"] and meta["std"] and meta["labels"].palette is not None
    assert (exports["segformer"] / "encode.xml").is_file()  # OpenVINO IR when asked


def test_export_cli_reports_its_stages_and_writes_ir_with_fp32_weights(tmp_path, capsys):
    from sdcpc_core.cli import main as sdcpc_main

    if not installed("openvino"):
        pytest.skip("openvino is not installed")
    out = tmp_path / "baseline"
    assert sdcpc_main(["export", str(BASELINE_CHECKPOINT), "-o", str(out), "--openvino"]) == 0
    err = capsys.readouterr().err
    for stage in ("encode graph", "aggregate graph", "OpenVINO IR", "done"):
        assert "sdcpc export: [" in err and stage in err, err
    # OpenVINO's save_model halves weights to fp16 unless told not to: the IR's weights must be as
    # large as the ONNX file's (fp32), not about half
    assert (out / "encode.bin").stat().st_size > 0.95 * (out / "encode.onnx").stat().st_size


def test_an_export_directory_stands_for_its_checkpoint_in_every_tool(exports, tmp_path, capsys):
    """``sdcpc info|palette|export`` (and anything else that loads a checkpoint) take an export
    directory as the checkpoint it carries; a plain directory is refused as such."""
    from sdcpc_core.checkpoints import load_checkpoint
    from sdcpc_core.cli import main as sdcpc_main

    model, meta = load_checkpoint(exports["segformer"])
    assert model.config == read_export(exports["segformer"])["config"]
    assert sdcpc_main(["info", str(exports["segformer"])]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == list(meta["labels"].names)
    again = export_model(exports["segformer"], tmp_path / "smaller", input_size=(64, 96))  # re-export
    assert read_export(again)["input_size"] == [64, 96]
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint"):
        load_checkpoint(tmp_path)


def test_backend_setting_is_checked():
    with pytest.raises(SettingError, match="allowed: torch, onnxruntime, openvino, auto"):
        StreamingSegmenter.from_checkpoint(None, device="cpu", backend="tensorrt")


@pytest.mark.parametrize("available,want", [({"openvino", "onnxruntime"}, "openvino"),
                                            ({"onnxruntime"}, "torch"), (set(), "torch")])
def test_auto_backend_on_cpu_is_openvino_else_torch(monkeypatch, available, want):
    """ONNX Runtime's CPU provider ran slower than eager torch in every engine benchmark run, so
    ``auto`` never picks it for a CPU."""
    from sdcpc_core import runtimes

    monkeypatch.setattr(runtimes, "installed", lambda b: b == "torch" or b in available)
    assert runtimes.resolve_backend("auto", torch.device("cpu")) == want
    if "onnxruntime" in available:  # asked for by name, it is still used
        assert runtimes.resolve_backend("onnxruntime", torch.device("cpu")) == "onnxruntime"
