"""INT8 post-training quantisation of an export directory's graphs (``sdcpc export --int8``).

Both graphs of the streaming step (``encode`` and ``aggregate``, ``sdcpc_core.export``) are
calibrated on frames streamed through the engine exactly as the node streams them (same resize,
normalisation, frame buffer and reference rule): the ``encode`` inputs are the preprocessed frames,
the ``aggregate`` inputs the target's cache and its references' caches, computed in fp32.

- OpenVINO: NNCF's ``quantize`` (transformer model type, mixed preset) on the IR, written as
  ``encode.int8.xml/.bin`` and ``aggregate.int8.xml/.bin``.
- ONNX Runtime: its static quantisation (QDQ, per-channel int8 weights, uint8 activations,
  Conv and MatMul only), written as ``encode.int8.onnx`` and ``aggregate.int8.onnx``.

**Weights are quantised to 7 bits** (``WEIGHT_BITS``; NNCF ``overflow_fix=ENABLE``, ONNX Runtime
``reduce_range``), on every CPU: a CPU without VNNI (AVX2-only, AVX-512 before Cascade Lake)
multiplies u8 activations by s8 weights with an instruction pair whose 16-bit intermediate
saturates with 8-bit weights. With 8-bit weights, OpenVINO's labels agreed with fp32 on 97.2 % of
the held-out pixels there (99.5 % on a VNNI CPU); with 7-bit weights 99.5 % on both, so one graph
serves every CPU and a cache copied between machines stays exact (docs/benchmarks-engine.md).
Depthwise convolutions keep 8-bit weights in OpenVINO (NNCF leaves them: their int8 kernels
accumulate in 32 bits, no pair step).

Kept in floating point (``float_nodes``; the reasons are in docs/deployment.md):

- the class logits: every Conv/MatMul/Gemm producing the K class channels (the static classifier
  in ``encode``, the final classifier in ``aggregate``), since the labels are their argmax and the
  difference basis their softmax, and everything computed from them: the difference basis and the
  class prototypes with their keys and values (K rows each: tiny, and OpenVINO 2026.4's CPU plugin
  fails to compile an int8 MatMul over the (1, K, C) prototypes);
- the fine stage's selection: every node the top-k of the perceptual difference depends on (the
  difference between the frames' static predictions), so the locations refined are those fp32
  would refine;
- softmaxes and normalisations: neither quantiser quantises them (their inputs and outputs stay
  float; a matmul reading a softmax quantises its own input, as in every int8 transformer).

Calibration frames: a video file or an image folder (``sdcpc_core.frames``), any iterable of
(H, W, 3) uint8 RGB frames (a bag, read by ``sdcpc-eval``), or ``synthetic``: the generator the
embedded model was trained on, at the export's input size.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sdcpc_core.export import (
    CHECKPOINT,
    METADATA,
    ExportError,
    aggregate_input_names,
    aggregate_inputs,
    read_export,
)

RUNTIMES = ("openvino", "onnxruntime")
GRAPHS = ("encode", "aggregate")
DEFAULT_FRAMES = 48  # calibration frames streamed (each gives an encode and an aggregate sample)
SYNTHETIC = "synthetic"
SYNTHETIC_VIDEO_LENGTH = 12  # frames per synthetic calibration video (several scenes, stream starts)
SYNTHETIC_SEED = 9000  # clear of the training (0...) and held-out (5000...) seeds
WEIGHT_BITS = 7  # overflow-safe on CPUs without VNNI (the module's docstring); recorded in metadata


def int8_files(runtime: str) -> dict[str, str]:
    """graph -> the file its int8 version is read from, for ``runtime``."""
    suffix = {"openvino": "xml", "onnxruntime": "onnx"}[runtime]
    return {g: f"{g}.int8.{suffix}" for g in GRAPHS}


def has_int8(export_dir, runtime: str) -> bool:
    return all((Path(export_dir) / f).is_file() for f in int8_files(runtime).values())


# -- calibration frames ---------------------------------------------------------------------------

def synthetic_frames(count: int, size) -> Iterator[np.ndarray]:
    """``count`` frames of the synthetic world (videos of SYNTHETIC_VIDEO_LENGTH frames)."""
    from sdcpc_core.data.synthetic import iter_video

    seed, left = SYNTHETIC_SEED, count
    while left > 0:
        length = min(SYNTHETIC_VIDEO_LENGTH, left)
        for frame, _ in iter_video(seed, length, *size):
            yield frame
        seed, left = seed + 1, left - length


def calibration_frames(source, count: int, size) -> tuple[Iterable[np.ndarray], str]:
    """(frames, description) for ``source``: ``synthetic``, a video file, an image folder, or an
    iterable of RGB frames. Raises FrameSourceError naming a source that cannot be read."""
    from sdcpc_core.frames import open_frames

    if source is None or (isinstance(source, str) and source == SYNTHETIC):
        return synthetic_frames(count, size), f"{SYNTHETIC} ({count} frames at {size[0]}x{size[1]})"
    if isinstance(source, (str, Path)):
        return open_frames(source), str(source)
    return source, type(source).__name__


class _Recorder:
    """Wraps an engine's runner: keeps the inputs of every encode and aggregate call."""

    def __init__(self, runner, temporal: bool, num_references: int):
        self.runner = runner
        self.temporal = temporal
        self.names = aggregate_input_names(temporal, num_references)
        self.encode_feeds: list[dict] = []
        self.aggregate_feeds: list[dict] = []

    def encode(self, image):
        self.encode_feeds.append({"image": image.detach().float().numpy().copy()})
        return self.runner.encode(image)

    def aggregate(self, current, references):
        tensors = aggregate_inputs(current, references, self.temporal)
        self.aggregate_feeds.append({n: t.detach().float().numpy().copy() for n, t in zip(self.names, tensors)})
        return self.runner.aggregate(current, references)


def calibration_samples(model, meta: dict, frames: Iterable[np.ndarray], count: int, segmenter_cls,
                        progress=None) -> tuple[list[dict], list[dict]]:
    """Stream up to ``count`` frames through an fp32 torch engine configured as the export
    (input size, mean/std, references): (encode feeds, aggregate feeds), one of each per frame.
    A frame of another size than the one before starts a new stream (the engine's reset rule).

    ``segmenter_cls`` is ``sdcpc_core.engine.StreamingSegmenter``, given by the caller: the engine
    itself quantises on the fly (engine -> exports -> quantize), so this module never imports it."""
    config = meta["config"]
    engine = segmenter_cls(
        model, meta["labels"], device="cpu", backend="torch", precision="fp32",
        input_size=tuple(meta["input_size"]), mean=tuple(meta["mean"]), std=tuple(meta["std"]),
        reference_offsets=tuple(meta["reference_offsets"]) if config.temporal else None)
    recorder = _Recorder(engine.runner, config.temporal, meta["num_references"])
    engine.runner = recorder
    for i, frame in enumerate(frames):
        if i >= count:
            break
        engine.step(frame)
        if progress is not None and (i + 1) % 8 == 0:
            progress(f"calibration: {i + 1}/{count} frames streamed")
    if not recorder.encode_feeds:
        raise ExportError("the calibration source gave no frames; give a video, an image folder or "
                          f"'{SYNTHETIC}' (sdcpc export --int8 --calibration SOURCE)")
    return recorder.encode_feeds, recorder.aggregate_feeds


# -- what stays in floating point -----------------------------------------------------------------

def _ancestors(graph, outputs: set[str]) -> set[str]:
    """Names of the nodes that ``outputs`` (tensor names) depend on."""
    producer = {o: n for n in graph.node for o in n.output}
    seen, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(node.input)
    return seen


def _descendants(graph, names: set[str]) -> set[str]:
    """Names of the nodes that read, directly or not, an output of the nodes ``names``."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o for n in graph.node if n.name in names for o in n.output}
    seen, stack = set(), list(outputs)
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(node.output)
    return seen


def float_nodes(onnx_path, num_classes: int) -> dict[str, str]:
    """Node name -> why it stays in floating point (see the module's docstring)."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    keep = {}
    for node in graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            dims = [weights[i] for i in node.input[1:2] if i in weights]
            channels = dims[0][0] if node.op_type == "Conv" and dims else (dims[0][-1] if dims else None)
            if channels == num_classes:
                keep[node.name] = "class logits"
    for name in _descendants(graph, set(keep)):
        keep.setdefault(name, "computed from the class prediction")
    topk = {o for n in graph.node if n.op_type == "TopK" for o in n.output}
    for name in _ancestors(graph, topk):
        keep.setdefault(name, "fine-stage selection")
    return keep


# -- the quantisers -------------------------------------------------------------------------------

def _quantize_openvino(export_dir: Path, graph: str, samples: list[dict], keep: dict, out: Path,
                       weight_bits: int = WEIGHT_BITS) -> None:
    import re

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    nncf.set_log_level(logging.ERROR)  # one line per op it leaves alone
    xml = export_dir / f"{graph}.xml"
    model = ov.Core().read_model(str(xml if xml.is_file() else export_dir / f"{graph}.onnx"))
    # OpenVINO names its ops after the ONNX nodes (a Conv's bias add: NAME/WithoutBiases, ...)
    scope = nncf.IgnoredScope(patterns=[re.escape(n) + r"(/.*)?" for n in keep], validate=False)
    # no SmoothQuant: with it, OpenVINO 2026.4's CPU plugin refused to compile the encode graph
    # (dnnl_postops_composer 'scale.size() == OC'); the labels agree without it (test_int8.py)
    # overflow_fix ENABLE: 7-bit weights in every layer, not only the first (NNCF's default)
    fix = OverflowFix.ENABLE if weight_bits == 7 else OverflowFix.DISABLE
    advanced = AdvancedQuantizationParameters(overflow_fix=fix,
                                              smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                              model_type=nncf.ModelType.TRANSFORMER, ignored_scope=scope,
                              advanced_parameters=advanced)
    ov.save_model(quantized, str(out), compress_to_fp16=False)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, samples):
        self.samples = iter(samples)

    def get_next(self):
        return next(self.samples, None)


def _quantize_onnxruntime(export_dir: Path, graph: str, samples: list[dict], keep: dict, out: Path,
                          weight_bits: int = WEIGHT_BITS) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with _quiet_root_logger():  # "consider pre-processing", per-bias notes: nothing to act on
        quantize_static(str(export_dir / f"{graph}.onnx"), str(out), _Reader(samples),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=weight_bits == 7,
                        op_types_to_quantize=["Conv", "MatMul"], nodes_to_exclude=sorted(keep))


@contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


QUANTIZERS = {"openvino": _quantize_openvino, "onnxruntime": _quantize_onnxruntime}


def quantize_export(export_dir, calibration=SYNTHETIC, runtimes=RUNTIMES, frames: int = DEFAULT_FRAMES,
                    model=None, progress=None, *, segmenter_cls, weight_bits: int = WEIGHT_BITS) -> Path:
    """Add the int8 graphs for ``runtimes`` to ``export_dir`` (calibrated on ``calibration``: see
    ``calibration_frames``) and record them in its metadata. ``model``: the loaded model (default:
    the directory's model.pt). Files are written under temporary names and renamed when whole.
    ``segmenter_cls``: ``StreamingSegmenter``, which streams the calibration frames.
    ``weight_bits`` 8: full-range weights, exact only on CPUs with VNNI (the module's docstring)."""
    import importlib.util

    from sdcpc_core.checkpoints import load_checkpoint

    started = time.perf_counter()

    def stage(what: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - started:5.1f} s] {what}")

    export_dir = Path(export_dir)
    meta = read_export(export_dir)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ExportError(f"int8 runtimes {list(runtimes)}: allowed {', '.join(RUNTIMES)}")
    missing = [r for r in runtimes if importlib.util.find_spec(r) is None]
    if "openvino" in runtimes and importlib.util.find_spec("nncf") is None:
        missing.append("nncf")
    if missing:
        raise ExportError(f"int8 quantisation needs {', '.join(missing)}: pip install {' '.join(missing)} "
                          "(the deploy extra: pip install 'sdcpc[deploy]')")
    if weight_bits not in (7, 8):
        raise ExportError(f"weight_bits {weight_bits}: allowed 7 (every CPU) or 8 (VNNI CPUs only)")
    if frames < 1:
        raise ExportError(f"calibration frames must be at least 1, got {frames}")
    if model is None:
        if not (export_dir / CHECKPOINT).is_file():
            raise ExportError(f"{export_dir} lacks {CHECKPOINT}, which calibration streams through; "
                              "re-export the checkpoint (`sdcpc export CKPT -o DIR --int8`)")
        model, _ = load_checkpoint(export_dir / CHECKPOINT)
    source, described = calibration_frames(calibration, frames, meta["input_size"])
    stage(f"calibration: streaming up to {frames} frames of {described}")
    encode_feeds, aggregate_feeds = calibration_samples(model.float().cpu(), meta, source, frames, segmenter_cls,
                                                        stage)
    samples = {"encode": encode_feeds, "aggregate": aggregate_feeds}
    kept = {g: float_nodes(export_dir / f"{g}.onnx", meta["config"].num_classes) for g in GRAPHS}
    written = {}
    for runtime in runtimes:
        for graph, name in int8_files(runtime).items():
            stage(f"{runtime} int8 {graph} graph ({len(samples[graph])} samples) -> {export_dir / name}")
            tmp = export_dir / f".tmp.{name}"
            try:
                QUANTIZERS[runtime](export_dir, graph, samples[graph], kept[graph], tmp, weight_bits)
                for part in _parts(tmp):
                    part.replace(export_dir / part.name.removeprefix(".tmp."))
            finally:
                for part in _parts(tmp):
                    part.unlink(missing_ok=True)
            written.setdefault(runtime, []).append(name)
    raw = json.loads((export_dir / METADATA).read_text())
    int8 = raw.get("int8", {})
    int8.update({r: {"files": f, "calibration": described, "frames": len(encode_feeds),
                     "weight_bits": weight_bits} for r, f in written.items()})
    int8["float_nodes"] = {g: dict(sorted(k.items())) for g, k in kept.items()}
    raw["int8"] = int8
    tmp_meta = export_dir / f".tmp.{METADATA}"
    tmp_meta.write_text(json.dumps(raw, indent=1))
    tmp_meta.replace(export_dir / METADATA)
    stage(f"int8 done: {export_dir}")
    return export_dir


def _parts(path: Path) -> list[Path]:
    """A graph file and its companions (an IR's .bin, ONNX external data)."""
    return [p for p in (path, path.with_suffix(".bin"), Path(str(path) + ".data")) if p.exists()]
