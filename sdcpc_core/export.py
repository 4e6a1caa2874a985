"""Export a checkpoint to ONNX (and OpenVINO IR) for the deployment runtimes.

An export directory holds two graphs with fixed shapes and the checkpoint's metadata::

    encode.onnx       image (1, 3, H, W) -> the frame cache, flattened to named tensors
    aggregate.onnx    target cache + one cache per reference -> logits (1, K, H/4, W/4)
    encode.xml/.bin, aggregate.xml/.bin   OpenVINO IR (``openvino=True``), optional
    model.pt          the checkpoint itself (the ``torch`` backend, and re-exports)
    sdcpc_export.json metadata: config, classes and palette, mean/std, input size, offsets, tensors

The frame buffer stays in the engine: ``encode`` runs once per frame, and ``aggregate`` takes the
target's cache and the cached references, so exported graphs and eager PyTorch stream alike.
The fine stage runs its fixed-shape path (see ``WindowCrossFrameAttention``), equal to eager.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sdcpc_core.checkpoints import CheckpointError, load_checkpoint
from sdcpc_core.checkpoints.export_dir import CHECKPOINT, METADATA, is_export_dir
from sdcpc_core.models.temporal import FrameCache

__all__ = ["CHECKPOINT", "METADATA", "ExportError", "export_model", "export_module", "is_export_dir",
           "read_export"]

FORMAT = "sdcpc-export"
VERSION = 2  # 2: encode outputs each frame's reference summary (basis, prototypes), no keys/values
GRAPHS = ("encode", "aggregate")
OPSET = 18
FEATURES = ("feature4", "feature8", "feature16", "feature32")  # encoder maps by stride
# what aggregate reads of the target, and of each reference (FrameCache field names)
TARGET_FIELDS = FEATURES + ("static", "basis")
REFERENCE_FIELDS = ("static", "basis", "proto_keys", "proto_values", "proto_bias")
CACHE_FIELDS = REFERENCE_FIELDS  # encode outputs what a reference is read for (the target's: a subset)


class ExportError(CheckpointError):
    """An export directory that cannot be used, with what is wrong and what to do."""


def cache_names(temporal: bool) -> list[str]:
    """Output names of ``encode``: the FrameCache fields the graphs exchange."""
    return list(FEATURES) + (list(CACHE_FIELDS) if temporal else [])


def aggregate_input_names(temporal: bool, num_references: int) -> list[str]:
    if not temporal:
        return [f"target_{f}" for f in FEATURES]
    return ([f"target_{f}" for f in TARGET_FIELDS]
            + [f"ref{i}_{f}" for i in range(num_references) for f in REFERENCE_FIELDS])


def cache_to_tensors(cache: FrameCache, temporal: bool) -> list[torch.Tensor]:
    """FrameCache -> the tensors named by ``cache_names`` (B = 1)."""
    extra = [getattr(cache, f) for f in CACHE_FIELDS] if temporal else []
    return list(cache.features) + extra


def tensors_to_cache(tensors, temporal: bool) -> FrameCache:
    """The tensors named by ``cache_names`` -> FrameCache (no ``static_logits``: aggregation
    reads the frame's summary fields instead)."""
    features = tuple(tensors[:4])
    if not temporal:
        return FrameCache(features, features[1], features[1][:, :0])
    return FrameCache(features, None, None)._replace(**dict(zip(CACHE_FIELDS, tensors[4:])))


def aggregate_inputs(current: FrameCache, references, temporal: bool) -> list[torch.Tensor]:
    """The inputs of ``aggregate`` in ``aggregate_input_names`` order."""
    out = list(current.features)
    if temporal:
        out += [getattr(current, f) for f in TARGET_FIELDS[len(FEATURES):]]
        for r in references:
            out += [getattr(r, f) for f in REFERENCE_FIELDS]
    return out


class _Encode(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.temporal = model.config.temporal

    def forward(self, image):
        return tuple(cache_to_tensors(self.model.encode(image), self.temporal))


class _Aggregate(nn.Module):
    def __init__(self, model, num_references: int):
        super().__init__()
        self.model = model
        self.temporal = model.config.temporal
        self.num_references = num_references

    def forward(self, *tensors):
        features = tuple(tensors[:4])
        if not self.temporal:
            return self.model.decode_head(list(features))
        target = FrameCache(features, tensors[4], None, basis=tensors[5])
        n = len(REFERENCE_FIELDS)
        refs = [FrameCache((), None, None)._replace(**dict(zip(REFERENCE_FIELDS, tensors[6 + n * i: 6 + n * (i + 1)])))
                for i in range(self.num_references)]
        return self.model.forward_cached(target, refs)["logits"]


def _export_graph(module, args, path: Path, input_names, output_names) -> None:
    # the exporter logs a warning per torchvision op it cannot register (torchvision is not used),
    # and its optimiser one per multi-output op it leaves unfolded (a Split of constant weights)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(args), dynamo=True, opset_version=OPSET,
                                    input_names=input_names, output_names=output_names,
                                    optimize=True, verbose=False)
    program.save(str(path))


def export_model(checkpoint, output, input_size=None, openvino: bool = False, progress=None) -> Path:
    """Write the export directory ``output`` for ``checkpoint`` (a path; None: the embedded model).

    ``input_size`` ([H, W]) defaults to the checkpoint's recorded training size; the graphs take
    exactly this size (the engine resizes frames to it).
    """
    from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT

    checkpoint = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if is_export_dir(checkpoint):  # a re-export (another input size, IR): from its model.pt
        checkpoint = checkpoint / CHECKPOINT
    model, meta = load_checkpoint(checkpoint)
    size = input_size or meta.get("input_size")
    if not size:
        raise ExportError(f"{checkpoint} records no input size; pass one (sdcpc export --input-size H W)")
    return export_module(model, meta, size, output, checkpoint, openvino, progress)


def export_module(model, meta: dict, input_size, output, checkpoint=None, openvino: bool = False,
                  progress=None) -> Path:
    """Export a loaded model; ``meta`` has the checkpoint's labels, mean and std. ``checkpoint``
    (its file) is copied in as model.pt when given. ``progress(str)`` hears of each stage (tens of
    seconds each on a small CPU)."""
    started = time.perf_counter()

    def stage(what: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - started:5.1f} s] {what}")

    size = [int(s) for s in input_size]
    if len(size) != 2 or min(size) < 32:
        raise ExportError(f"input size must be [height, width], each >= 32; got {size}")
    config = model.config
    num_refs = len(config.reference_offsets) if config.temporal else 0
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    fine = model.dssa.fine if config.temporal else None
    names = cache_names(config.temporal)
    agg_names = aggregate_input_names(config.temporal, num_refs)
    try:
        if fine is not None:
            fine.fixed_shape = True
        with torch.no_grad():
            image = torch.randn(1, 3, *size)
            cache = model.encode(image)
            stage(f"encode graph ({size[0]}x{size[1]}) -> {out / 'encode.onnx'}")
            _export_graph(_Encode(model), (image,), out / "encode.onnx", ["image"], names)
            # distinct tensors: the exporter would merge inputs that alias one tensor
            refs = [model.encode(torch.randn(1, 3, *size)) for _ in range(num_refs)]
            stage(f"aggregate graph ({num_refs} references) -> {out / 'aggregate.onnx'}")
            _export_graph(_Aggregate(model, num_refs), aggregate_inputs(cache, refs, config.temporal),
                          out / "aggregate.onnx", agg_names, ["logits"])
            logits_shape = list(model.forward_cached(cache, refs)["logits"].shape)
    finally:
        if fine is not None:
            fine.fixed_shape = False
    files = ["encode.onnx", "aggregate.onnx"]
    if checkpoint is not None:
        shutil.copyfile(checkpoint, out / CHECKPOINT)
        files.append(CHECKPOINT)
    shapes = dict(zip(names, (list(t.shape) for t in cache_to_tensors(cache, config.temporal))))
    if openvino:
        import openvino as ov

        stage("OpenVINO IR (encode.xml, aggregate.xml)")
        for graph in GRAPHS:  # fp32 weights: save_model would halve them to fp16 by default
            ov.save_model(ov.convert_model(str(out / f"{graph}.onnx")), str(out / f"{graph}.xml"),
                          compress_to_fp16=False)
            files += [f"{graph}.xml", f"{graph}.bin"]
    meta_out = {
        "format": FORMAT, "version": VERSION, "config": config.to_dict(),
        "labels": meta["labels"].to_dict(), "mean": list(meta["mean"]), "std": list(meta["std"]),
        "input_size": size, "reference_offsets": list(config.reference_offsets) if config.temporal else [],
        "num_references": num_refs, "cache": shapes, "logits": logits_shape, "opset": OPSET,
        "files": files, "source": str(checkpoint) if checkpoint else None,
    }
    (out / METADATA).write_text(json.dumps(meta_out, indent=1))
    stage(f"done: {out}")
    return out


def unreadable_graph(source, runtime: str, error: Exception) -> ExportError:
    """The error for a graph file a runtime cannot load (truncated, corrupt, another version)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__  # OpenVINO's last line says what failed
    return ExportError(f"{runtime} cannot load {source} ({reason.strip()}); re-export the model "
                       "(`sdcpc export CKPT -o DIR`)")


def read_export(path, check_graphs: bool = True) -> dict:
    """Metadata of an export directory, checked against its files and graphs; clear errors.
    ``check_graphs=False`` skips reading the graphs' declared inputs and outputs (the export cache's
    own entries, checked when they were written: a start-up saves importing onnx and parsing them)."""
    from sdcpc_core.classes import LabelSet
    from sdcpc_core.models import SDCPCConfig

    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"export directory {path} does not exist; write one with `sdcpc export CKPT -o DIR`")
    meta_file = path / METADATA
    if not meta_file.is_file():
        raise ExportError(f"{path} has no {METADATA}: not an sdcpc export directory; write one with "
                          "`sdcpc export CKPT -o DIR`")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{meta_file} is not valid JSON ({e}); re-export the model") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExportError(f"{meta_file}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                          f"expected {FORMAT!r} version {VERSION}; re-export with this sdcpc")
    missing = [f for f in ("encode.onnx", "aggregate.onnx") if not (path / f).is_file()]
    if missing:
        raise ExportError(f"export directory {path} lacks {', '.join(missing)}; re-export the model "
                          "(`sdcpc export CKPT -o DIR`)")
    try:
        meta["config"] = SDCPCConfig.from_dict(meta["config"])
        meta["labels"] = LabelSet.from_dict(meta["labels"])
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{meta_file}: bad config or classes ({e}); re-export the model") from None
    if meta["labels"].num_classes != meta["config"].num_classes:
        raise ExportError(f"{meta_file}: {meta['labels'].num_classes} classes but the config has "
                          f"{meta['config'].num_classes}; re-export the model")
    if check_graphs:
        _check_graphs(path, meta)
    return meta


def _check_graphs(path: Path, meta: dict) -> None:
    """The graphs' declared inputs and outputs must be what the metadata says."""
    import onnx

    config, size = meta["config"], meta["input_size"]
    temporal = config.temporal
    want = {
        "encode": ({"image": [1, 3, *size]}, {n: meta["cache"].get(n) for n in cache_names(temporal)}),
        "aggregate": ({n: None for n in aggregate_input_names(temporal, meta["num_references"])},
                      {"logits": [1, config.num_classes, *meta["logits"][2:]]}),
    }
    for graph, (inputs, outputs) in want.items():
        try:
            g = onnx.load(str(path / f"{graph}.onnx"), load_external_data=False).graph
        except Exception as e:  # truncated or not ONNX at all: protobuf's DecodeError and kin
            raise ExportError(f"{path / graph}.onnx is not a readable ONNX graph ({type(e).__name__}: "
                              f"{e}); re-export the model (`sdcpc export CKPT -o DIR`)") from None
        for kind, declared, expected in (("input", g.input, inputs), ("output", g.output, outputs)):
            found = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in declared}
            if set(found) != set(expected):
                raise ExportError(f"{path / graph}.onnx {kind}s {sorted(found)} do not match the metadata "
                                  f"({sorted(expected)}); the directory mixes exports, re-export the model")
            for name, shape in expected.items():
                if shape is not None and found[name] != list(shape):
                    raise ExportError(f"{path / graph}.onnx {kind} {name!r} has shape {found[name]} but "
                                      f"{METADATA} says {list(shape)}; re-export the model")
