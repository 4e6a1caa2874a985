"""precision auto per CPU class, and the warning for a precision asked for where it is slow.

Pure decisions on given CPU flags (every CPU class, whatever CPU runs the test); the engine's use of
them on the machine's own CPU is in test_int8.py."""

import pytest
import torch

from sdcpc_core import runtimes
from sdcpc_core.cpu import FLAGS_VARIABLE, CpuFeatures, cpu_features, parse_cpuinfo

CPU = torch.device("cpu")
AVX2 = CpuFeatures("Intel Core i7-8700 (AVX2 only)", frozenset("sse4_2 avx avx2 fma f16c".split()))
AVX512 = CpuFeatures("Intel Xeon Skylake-SP", frozenset("avx2 avx512f avx512bw avx512vl".split()))
VNNI = CpuFeatures("Intel Xeon Cascade Lake", AVX512.flags | {"avx512_vnni"})
ALDER_LAKE = CpuFeatures("Intel Core i7-12700 (AVX-VNNI)", AVX2.flags | {"avx_vnni"})
VNNI_BF16 = CpuFeatures("AMD EPYC Genoa", VNNI.flags | {"avx512_bf16"})
AMX = CpuFeatures("Intel Xeon Sapphire Rapids", VNNI_BF16.flags | {"amx_tile", "amx_int8", "amx_bf16"})


@pytest.fixture(autouse=True)
def openvino_offers_bf16(monkeypatch):
    """What OpenVINO's CPU plugin lists is a property of the machine; these tests ask what the rule
    decides, so it offers BF16 wherever the (given) CPU has native bf16."""
    monkeypatch.setattr(runtimes, "openvino_offers", lambda precision: True)


@pytest.mark.parametrize(("cpu", "backend", "int8_graphs", "want"), [
    (AVX2, "openvino", True, "fp32"),  # int8 saturates or is slower without VNNI
    (AVX2, "onnxruntime", True, "fp32"),
    (VNNI, "onnxruntime", True, "fp32"),  # ONNX Runtime's QDQ int8 is slower than its fp32
    (AVX512, "openvino", True, "fp32"),
    (VNNI, "openvino", True, "int8"),
    (VNNI, "openvino", False, "fp32"),  # no int8 graphs for this model
    (ALDER_LAKE, "openvino", True, "int8"),
    (VNNI_BF16, "openvino", True, "bf16"),
    (VNNI_BF16, "onnxruntime", True, "fp32"),  # no bf16 on a CPU, int8 slower
    (AMX, "openvino", True, "bf16"),
    (AMX, "torch", True, "fp32"),  # torch is the exact reference
    (VNNI_BF16, "torch", False, "fp32"),
])
def test_auto_picks_per_cpu_class(cpu, backend, int8_graphs, want):
    precision, why, warning = runtimes.choose_precision("auto", backend, CPU, int8_graphs, cpu)
    assert precision == want and why.startswith("auto:") and warning is None
    if backend != "torch":  # the start-up line names the CPU's instruction sets
        assert cpu.short in why, why


def test_auto_without_int8_graphs_says_how_to_make_them():
    _, why, _ = runtimes.choose_precision("auto", "openvino", CPU, False, VNNI)
    assert "sdcpc export CKPT -o DIR --int8 --calibration" in why


def test_auto_on_a_gpu_is_fp32():
    assert runtimes.choose_precision("auto", "onnxruntime", torch.device("cuda"), True, AMX)[0] == "fp32"


@pytest.mark.parametrize(("precision", "cpu", "words"), [
    ("int8", AVX2, "without VNNI"),
    ("int8@onnxruntime", VNNI, "slower than its fp32"),
    ("int8", AVX512, "without VNNI"),
    ("bf16", VNNI, "emulated"),
    ("bf16", AVX2, "emulated"),
])
def test_asked_precision_runs_with_one_warning_where_it_is_slow(precision, cpu, words):
    precision, _, backend = precision.partition("@")
    got, why, warning = runtimes.choose_precision(precision, backend or "openvino", CPU, True, cpu)
    assert got == precision and "was asked for" in why
    assert warning and words in warning and "precision auto picks fp32" in warning


@pytest.mark.parametrize(("precision", "cpu"), [("int8", VNNI), ("int8", ALDER_LAKE), ("bf16", AMX),
                                                ("fp32", AVX2)])
def test_no_warning_where_the_precision_is_native(precision, cpu):
    assert runtimes.choose_precision(precision, "openvino", CPU, True, cpu)[2] is None


def test_cpuinfo_is_read_and_can_be_replaced(monkeypatch):
    text = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\n"
            "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    cpu = parse_cpuinfo(text)
    assert (cpu.model, cpu.logical_cpus) == ("AMD EPYC", 2)
    assert cpu.int8_dot and not cpu.bf16_dot and cpu.short == "AVX2, AVX-512, VNNI"
    assert cpu.isa == "AVX2 yes, AVX-512 yes, VNNI yes, AVX512-BF16 no, AMX no"
    monkeypatch.setenv(FLAGS_VARIABLE, "sse4_2 avx2")
    forced = cpu_features()
    assert forced.short == "AVX2" and not forced.int8_dot and FLAGS_VARIABLE in forced.model
