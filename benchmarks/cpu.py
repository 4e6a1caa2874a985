"""The CPU a figure was measured on: its model and the instruction sets that decide CPU inference
speed (``sdcpc_core.cpu``, which ``precision: auto`` decides from). Every benchmark prints this line
first (``python benchmarks/cpu.py`` prints it alone)."""

from __future__ import annotations

import os

from sdcpc_core.cpu import FLAGS_VARIABLE, cpu_features

# the variables that cap the instruction sets oneDNN (OpenVINO's CPU plugin, torch), torch's own
# kernels and MKL use: a VNNI machine standing in for an AVX2-only one (docs/benchmarks-engine.md)
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", FLAGS_VARIABLE)


def cpu_line() -> str:
    """``cpu: MODEL, N logical CPUs; AVX2 yes, AVX-512 yes, VNNI yes, AVX512-BF16 no, AMX no``,
    and the instruction-set caps in force, if any."""
    cpu = cpu_features()
    caps = [f"{v}={os.environ[v]}" for v in ISA_CAPS if v in os.environ]
    capped = f"; capped: {' '.join(caps)}" if caps else ""
    return f"cpu: {cpu.model}, {cpu.logical_cpus} logical CPUs; {cpu.isa}{capped}"


if __name__ == "__main__":
    print(cpu_line())
