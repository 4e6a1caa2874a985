"""The CPU a figure was measured on: model and the instruction sets that decide CPU inference speed."""

from __future__ import annotations

import os
import platform

# /proc/cpuinfo flag -> what users call it
INSTRUCTION_SETS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX512-VNNI"),
                    ("avx_vnni", "AVX-VNNI"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX"))


def cpu_description() -> str:
    """``AMD EPYC, 2 cores: AVX2 yes, AVX-512 yes, … AMX no`` (Linux; elsewhere the platform name)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        return f"{model}, {os.cpu_count()} cores (instruction sets unknown)"
    sets = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for flag, name in INSTRUCTION_SETS)
    return f"{model}, {len(os.sched_getaffinity(0))} cores: {sets}"


if __name__ == "__main__":
    print(f"cpu: {cpu_description()}")
