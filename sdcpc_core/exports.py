"""The export a graph backend needs, made once per checkpoint and kept in the cache.

A plain checkpoint run on OpenVINO or ONNX Runtime is exported (and for int8 quantised) into
``sdcpc_core.cache`` under a key naming everything that shapes the graphs: the checkpoint's content
hash, the runtime, the graphs' precision (fp32 graphs serve fp32, bf16 and fp16, which are compile
hints; int8 has its own), the input size, and a digest of the code and library versions that write
them. A second start finds the entry and only compiles it, as quick as loading the checkpoint.

int8 made on the fly is calibrated on the synthetic world, so only the embedded models (trained on
it) are quantised here; any other checkpoint needs ``sdcpc export --int8 --calibration SOURCE``
with frames of its own scenes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import tempfile
import time
from pathlib import Path

from sdcpc_core.settings import SettingError

GRAPH_CODE = ("export.py", "quantize.py", "models")  # sdcpc_core files whose change changes a graph
_code_digest: str | None = None


def _versions() -> str:
    found = []
    for dist in ("torch", "onnx", "onnxscript", "openvino", "nncf", "onnxruntime"):
        try:
            found.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ",".join(found)


def code_digest() -> str:
    """A digest of the code that writes the graphs and the libraries it uses."""
    global _code_digest
    if _code_digest is None:
        root = Path(__file__).parent
        digest = hashlib.sha256(_versions().encode())
        for name in GRAPH_CODE:
            path = root / name
            for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
                digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
        _code_digest = digest.hexdigest()[:8]
    return _code_digest


def graph_precision(precision: str) -> str:
    return "int8" if precision == "int8" else "fp32"


def export_key(source, backend: str, precision: str, input_size, mean, std) -> str:
    """The cache key of the export of checkpoint file ``source`` for ``backend`` x ``precision``."""
    from sdcpc_core.cache import content_digest

    norm = hashlib.sha256(repr((tuple(mean), tuple(std))).encode()).hexdigest()[:6]
    return (f"{content_digest(source)}-{backend}-{graph_precision(precision)}-"
            f"{input_size[0]}x{input_size[1]}-{norm}-{code_digest()}")


def is_embedded(source) -> bool:
    """One of the checkpoints shipped with sdcpc (trained on the synthetic world)."""
    from sdcpc_core.checkpoints import BASELINE_CHECKPOINT, DEFAULT_CHECKPOINT

    return source is not None and Path(source).resolve() in {DEFAULT_CHECKPOINT.resolve(),
                                                            BASELINE_CHECKPOINT.resolve()}


def cached_export(model, labels, input_size, backend: str, precision: str, mean, std, source=None,
                  progress=None, segmenter_cls=None) -> tuple[Path, str]:
    """(export directory, where it came from) for ``model`` on ``backend`` at ``precision``.

    ``source``: the checkpoint file the model was read from, which keys the cache; without one
    the export is made in a fresh temporary directory. Raises SettingError for what cannot be
    exported here (no input size; int8 for a checkpoint that has no calibration frames).
    """
    from sdcpc_core.cache import build_once
    from sdcpc_core.export import export_module, read_export

    if input_size is None:
        raise SettingError("input_size", None, f"backend {backend} runs fixed-size graphs: set "
                           "input_size, or export the model first (sdcpc export)")
    int8 = precision == "int8"
    if int8 and not is_embedded(source):
        raise SettingError("precision", precision, "int8 is calibrated on frames of your scenes: "
                           "`sdcpc export CKPT -o DIR --int8 --calibration VIDEO_OR_FOLDER`, then give "
                           "DIR as the checkpoint (only the embedded models are quantised on the fly)")
    meta = {"labels": labels, "mean": list(mean), "std": list(std)}
    cpu_model = model.float().cpu()

    def build(directory: Path) -> None:
        if progress is not None:
            also = " and quantising them to int8" if int8 else ""
            progress(f"backend {backend}: exporting the model's graphs once{also} (tens of seconds on "
                     "a small CPU; later starts reuse them from the cache)")
        export_module(cpu_model, meta, input_size, directory, openvino=backend == "openvino",
                      progress=progress)
        if int8:
            from sdcpc_core.quantize import SYNTHETIC, quantize_export

            quantize_export(directory, SYNTHETIC, runtimes=(backend,), model=cpu_model, progress=progress,
                            segmenter_cls=segmenter_cls)

    started = time.perf_counter()
    if source is None:
        directory = Path(tempfile.mkdtemp(prefix="sdcpc_export_"))
        build(directory)
        return directory, f"exported now to {directory}, not cached (no checkpoint file)"
    key = export_key(source, backend, precision, input_size, mean, std)

    def build_checked(directory: Path) -> None:
        build(directory)
        read_export(directory)  # its graphs against its metadata, once, before it enters the cache

    directory, built = build_once("exports", key, build_checked)
    if built:
        return directory, f"exported now in {time.perf_counter() - started:.0f} s, cached in {directory}"
    return directory, f"cached export {directory}"
