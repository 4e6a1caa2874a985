"""Inference backends for the engine: eager PyTorch, ONNX Runtime, OpenVINO.

Each runner exposes the two steps the engine streams with::

    encode(image (1, 3, H, W) float32) -> FrameCache
    aggregate(target FrameCache, reference FrameCaches) -> logits (1, K, H/4, W/4)

The ONNX Runtime and OpenVINO runners run the graphs of an export directory (``sdcpc_core.export``)
and exchange torch tensors with the engine (zero-copy numpy views on CPU).
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import torch

from sdcpc_core.export import (
    ExportError,
    aggregate_input_names,
    aggregate_inputs,
    cache_names,
    tensors_to_cache,
    unreadable_graph,
)
from sdcpc_core.settings import BACKENDS, SettingError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # torch autocast
GRAPH_BACKENDS = ("openvino", "onnxruntime")  # what runs int8 (sdcpc_core.quantize)


def installed(backend: str) -> bool:
    return backend == "torch" or importlib.util.find_spec(backend) is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> the fastest installed backend for the device (``choose_backend``)."""
    return choose_backend(backend, device)[0]


def choose_backend(backend: str, device: torch.device, precision: str = "fp32",
                   fixed_size: bool = True) -> tuple[str, str]:
    """(backend, why): ``auto`` -> the fastest installed backend for the device, measured in
    benchmarks/engine.py: OpenVINO on CPU, ONNX Runtime with a GPU execution provider on CUDA,
    else torch (ONNX Runtime on a CPU ran SD-CPC-B0 slower than eager torch in every run).
    The graph backends need a fixed input size (``fixed_size``); int8 needs a graph backend."""
    if backend not in BACKENDS:
        raise SettingError("backend", backend, "allowed: " + ", ".join(BACKENDS))
    if backend != "auto":
        if not installed(backend):
            raise SettingError("backend", backend, f"not installed here; `pip install {backend}` "
                               "(scripts/setup.sh installs it) or use backend torch")
        return backend, f"backend {backend} was asked for"
    if not fixed_size:
        return "torch", ("auto: the exported graphs take one fixed input size and none is known "
                         "(set input_size for OpenVINO)")
    if device.type == "cpu":
        if installed("openvino"):
            return "openvino", "auto: OpenVINO is installed, the fastest CPU backend measured"
        if precision == "int8" and installed("onnxruntime"):
            return "onnxruntime", "auto: int8 runs on ONNX Runtime here (OpenVINO is not installed)"
        return "torch", "auto: OpenVINO is not installed (pip install openvino)"
    if installed("onnxruntime"):
        import onnxruntime as ort

        if {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(ort.get_available_providers()):
            return "onnxruntime", "auto: ONNX Runtime has a GPU execution provider"
    return "torch", "auto: no ONNX Runtime GPU execution provider here"


def choose_precision(precision: str, backend: str, device: torch.device, int8_graphs: bool,
                     cpu=None) -> tuple[str, str, str | None]:
    """(precision, why, warning) on ``backend``: ``auto`` -> the fastest precision whose labels
    agree with fp32 on this CPU (docs/benchmarks-engine.md, per CPU class), on OpenVINO: bf16 where
    the CPU has native bf16 dot products (AVX512-BF16/AMX); int8 where it has VNNI/AMX and int8
    graphs are there (``int8_graphs``); else fp32. fp32 on ONNX Runtime (its QDQ int8 was slower
    than its fp32 on every CPU measured), on torch (the exact reference) and on a GPU. A precision
    asked for is kept; ``warning`` says where it is slower than fp32 or emulated on this CPU.
    ``cpu``: ``sdcpc_core.cpu.CpuFeatures`` (default: this one)."""
    from sdcpc_core.cpu import cpu_features

    cpu = cpu or cpu_features()
    on_cpu = device.type == "cpu"
    if precision != "auto":
        warning = _slower_warning(precision, backend, cpu) if on_cpu else None
        return precision, f"precision {precision} was asked for", warning
    if not on_cpu:
        return "fp32", "auto: fp32 on a GPU (ask for fp16 on TensorRT)", None
    if backend == "torch":
        return "fp32", "auto: backend torch runs fp32, the exact reference", None
    isa = f"this CPU has {cpu.short}"
    if backend == "onnxruntime":
        return "fp32", f"auto: {isa}; ONNX Runtime's int8 was slower than its fp32 on every CPU measured", None
    if backend == "openvino" and cpu.bf16_dot and openvino_offers("bf16"):
        return "bf16", f"auto: {isa}; native bf16 is the fastest precision measured there", None
    if cpu.int8_dot and int8_graphs:
        return "int8", f"auto: {isa}; VNNI int8 is faster than fp32 there", None
    if cpu.int8_dot:
        return "fp32", (f"auto: {isa}, but this model has no int8 graphs (sdcpc export CKPT -o DIR --int8 "
                        "--calibration VIDEO_OR_FOLDER, then DIR as the checkpoint)"), None
    return "fp32", f"auto: {isa}; without VNNI int8 is not faster than fp32 (nor bf16 without AVX512-BF16)", None


def openvino_offers(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin runs ``precision`` (fp32 always; bf16, fp16, int8 per its
    OPTIMIZATION_CAPABILITIES on this CPU)."""
    return precision == "fp32" or precision.upper() in openvino_capabilities()


def openvino_capabilities() -> list[str]:
    import openvino as ov

    return ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _slower_warning(precision: str, backend: str, cpu) -> str | None:
    """Why ``precision``, asked for, runs slower than fp32 (or emulated) on ``cpu``, or None."""
    if precision == "int8" and not cpu.int8_dot:
        return (f"precision int8 on a CPU without VNNI ({cpu.short}): labels stay exact (7-bit "
                "weights) but it is not faster than fp32 here; precision auto picks fp32")
    if precision == "int8" and backend == "onnxruntime":
        return ("precision int8 on ONNX Runtime: its QDQ int8 was slower than its fp32 on every CPU "
                "measured; precision auto picks fp32 (OpenVINO int8 is faster on a VNNI CPU)")
    if precision == "bf16" and not cpu.bf16_dot:
        return (f"precision bf16 on a CPU without AVX512-BF16 or AMX ({cpu.short}): bf16 is emulated, "
                "slower than fp32 and less exact; precision auto picks fp32")
    if precision == "fp16" and backend != "onnxruntime" and "amx_fp16" not in cpu.flags:
        return (f"precision fp16 on a CPU without AMX-FP16 ({cpu.short}): fp16 is emulated, slower "
                "than fp32; precision auto picks fp32")
    return None


class TorchRunner:
    """Eager PyTorch (the reference): autocast to ``precision``, optional channels-last."""

    name = "torch"

    @staticmethod
    def check(device: torch.device, precision: str) -> None:
        if precision == "int8":
            raise SettingError("precision", precision, "backend torch runs fp32, bf16 or fp16 (the "
                               "reference); int8 runs on backend openvino, onnxruntime or auto")

    def __init__(self, model, device: torch.device, precision: str = "fp32"):
        self.check(device, precision)
        self.model, self.device, self.precision = model, device, precision

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def encode(self, image):
        with self._autocast():
            return self.model.encode(image)

    def aggregate(self, current, references):
        with self._autocast():
            return self.model.forward_cached(current, references)["logits"]


class _GraphRunner:
    """Shared by the exported-graph runners: flatten caches to the graphs' named tensors."""

    def __init__(self, export_dir, meta: dict, device: torch.device):
        self.dir, self.meta, self.device = export_dir, meta, device
        self.temporal = meta["config"].temporal
        self.cache_names = cache_names(self.temporal)
        self.input_names = aggregate_input_names(self.temporal, meta["num_references"])

    def _run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        raise NotImplementedError

    def _graph_file(self, graph: str, fp32_file: str, precision: str):
        """The file ``graph`` is read from: its int8 version for precision int8 (an ExportError
        saying how to make it when the directory has none)."""
        if precision != "int8":
            return self.dir / fp32_file
        from sdcpc_core.quantize import has_int8, int8_files

        if not has_int8(self.dir, self.name):
            raise ExportError(f"{self.dir} has no int8 graphs for {self.name}; add them with `sdcpc "
                              f"export CKPT -o DIR --int8 --calibration SOURCE` (a video, an image "
                              "folder, or synthetic for the embedded model)")
        return self.dir / int8_files(self.name)[graph]

    def encode(self, image):
        out = self._run("encode", {"image": _numpy(image)})
        return tensors_to_cache([torch.from_numpy(np.asarray(o)).to(self.device) for o in out], self.temporal)

    def aggregate(self, current, references):
        n = self.meta["num_references"]
        if self.temporal and len(references) != n:
            raise ValueError(f"this export aggregates exactly {n} reference frames, got {len(references)}; "
                             "re-export with the reference offsets you stream with")
        tensors = aggregate_inputs(current, references, self.temporal)
        (logits,) = self._run("aggregate", {k: _numpy(t) for k, t in zip(self.input_names, tensors)})
        return torch.from_numpy(np.asarray(logits)).to(self.device)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().cpu().numpy()


class OnnxRuntimeRunner(_GraphRunner):
    """ONNX Runtime: CPU, or the CUDA / TensorRT execution providers on a GPU.

    ``precision`` fp32 everywhere; fp16 only with TensorRT (its ``trt_fp16_enable``): ONNX Runtime
    runs fp32 graphs, it has no bf16/fp16 autocast of its own on CPU or CUDA. int8 (CPU): the
    directory's statically quantised graphs (``sdcpc_core.quantize``).
    """

    name = "onnxruntime"

    @staticmethod
    def check(device: torch.device, precision: str) -> None:
        """Refuse a device or precision this onnxruntime cannot run (before anything is exported)."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        gpu = device.type == "cuda"
        if gpu and not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(available):
            raise SettingError("device", str(device), "this onnxruntime has no CUDA or TensorRT "
                               "execution provider; install onnxruntime-gpu (docs/deployment.md) "
                               "or use device cpu")
        has_trt = gpu and "TensorrtExecutionProvider" in available
        if precision == "int8" and gpu:
            raise SettingError("precision", precision, "int8 on backend onnxruntime is checked on the "
                               "CPU execution provider only; use device cpu, or fp16 with TensorRT")
        if precision not in ("fp32", "int8") and not (precision == "fp16" and has_trt):
            raise SettingError("precision", precision, "backend onnxruntime runs fp32 or int8 (fp16 with "
                               "the TensorRT execution provider); use backend openvino or torch for "
                               f"{precision}")

    def __init__(self, export_dir, meta, device: torch.device, precision: str = "fp32",
                 threads: int | None = None):
        import onnxruntime as ort

        super().__init__(export_dir, meta, device)
        self.check(device, precision)
        available = ort.get_available_providers()
        if device.type == "cuda":
            providers = []
            if "TensorrtExecutionProvider" in available:
                providers.append(("TensorrtExecutionProvider", {
                    "device_id": device.index or 0, "trt_fp16_enable": precision == "fp16",
                    "trt_engine_cache_enable": True, "trt_engine_cache_path": str(export_dir)}))
            if "CUDAExecutionProvider" in available:
                providers.append(("CUDAExecutionProvider", {"device_id": device.index or 0}))
            providers.append("CPUExecutionProvider")
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {}
        for g in ("encode", "aggregate"):
            source = self._graph_file(g, f"{g}.onnx", precision)
            try:
                self.sessions[g] = ort.InferenceSession(str(source), options, providers=providers)
            except Exception as e:  # ONNX Runtime raises its own Fail / InvalidGraph / RuntimeException
                raise unreadable_graph(source, "ONNX Runtime", e) from None
        self.providers = self.sessions["encode"].get_providers()

    def _run(self, graph, feeds):
        return self.sessions[graph].run(None, feeds)


class OpenVINORunner(_GraphRunner):
    """OpenVINO on its CPU device (IR files when exported with them, else the ONNX graphs).

    ``precision`` is the inference precision hint: fp32, bf16 (CPUs with AVX512_BF16/AMX), fp16;
    int8 runs the directory's NNCF-quantised IR (``sdcpc_core.quantize``), what it keeps in
    floating point in fp32.
    """

    name = "openvino"
    HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}

    @staticmethod
    def check(device: torch.device, precision: str) -> None:
        """Refuse a device or precision OpenVINO cannot run here (before anything is exported)."""
        if device.type != "cpu":
            raise SettingError("device", str(device), "backend openvino runs on device cpu; on a GPU "
                               "use backend onnxruntime (CUDA/TensorRT execution providers)")
        if not openvino_offers(precision):
            raise SettingError("precision", precision, f"this CPU offers OpenVINO {', '.join(openvino_capabilities())} "
                               f"but not {precision.upper()}; use fp32 (or backend torch)")

    def __init__(self, export_dir, meta, device: torch.device, precision: str = "fp32",
                 threads: int | None = None):
        import openvino as ov

        super().__init__(export_dir, meta, device)
        self.check(device, precision)
        core = ov.Core()
        from sdcpc_core.cache import cache_root

        # compiled graphs are cached too (OpenVINO keys them by graph and config): a second start
        # loads them instead of compiling
        core.set_property({"CACHE_DIR": str(cache_root() / "openvino")})
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                  "EXECUTION_MODE_HINT": "PERFORMANCE" if precision in ("bf16", "fp16") else "ACCURACY",
                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        self.models = {}
        for g in ("encode", "aggregate"):
            xml = export_dir / f"{g}.xml"
            source = self._graph_file(g, xml.name if xml.is_file() else f"{g}.onnx", precision)
            try:
                self.models[g] = core.compile_model(str(source), "CPU", config)
            except RuntimeError as e:  # a truncated IR (.xml or .bin), or one from another version
                raise unreadable_graph(source, "OpenVINO", e) from None
        self.requests = {g: m.create_infer_request() for g, m in self.models.items()}
        names = {"encode": self.cache_names, "aggregate": ["logits"]}
        self.outputs = {g: [m.output(n) for n in names[g]] for g, m in self.models.items()}
        self._tensor = ov.Tensor

    def _run(self, graph, feeds):
        # the feeds are contiguous float32 arrays that outlive the call: no copy into the request.
        # The outputs land in fresh arrays, written in place by the request (no copy out of its
        # own buffers, which it reuses): encode's stay in the frame buffer for later steps.
        request = self.requests[graph]
        outputs = [np.empty(tuple(port.shape), np.float32) for port in self.outputs[graph]]
        for port, array in zip(self.outputs[graph], outputs):
            request.set_tensor(port, self._tensor(array, shared_memory=True))
        request.infer(feeds, share_inputs=True, share_outputs=True)
        return outputs
