"""The CPU a figure was measured on: its model and the instruction sets that decide CPU inference
speed. Every benchmark prints this line first (``python benchmarks/cpu.py`` prints it alone)."""

from __future__ import annotations

from pathlib import Path

# /proc/cpuinfo flags -> the names the docs use
ISA = (("AVX2", ("avx2",)), ("AVX-512", ("avx512f",)), ("VNNI", ("avx512_vnni", "avx_vnni")),
       ("AVX512-BF16", ("avx512_bf16",)), ("AMX", ("amx_tile", "amx_int8", "amx_bf16")))


def cpu_line() -> str:
    """``cpu: MODEL, N logical CPUs; AVX2 yes, AVX-512 yes, VNNI yes, AVX512-BF16 no, AMX no``."""
    model, flags, count = "unknown", set(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model, count = value.strip(), count + 1
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        return "cpu: unknown (no /proc/cpuinfo)"
    isa = ", ".join(f"{name} {'yes' if any(f in flags for f in names) else 'no'}" for name, names in ISA)
    return f"cpu: {model}, {count} logical CPUs; {isa}"


if __name__ == "__main__":
    print(cpu_line())
