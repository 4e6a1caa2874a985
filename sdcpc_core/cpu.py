"""The CPU's instruction sets that decide how fast (and how exactly) each precision runs on it.

Read once from ``/proc/cpuinfo`` (Linux, what robots run). ``SDCPC_CPU_FLAGS`` (a space-separated
flag list, as /proc/cpuinfo writes them) replaces what the CPU says: tests and the docs use it to
ask what ``precision: auto`` would pick on another CPU.

- **VNNI** (``avx512_vnni``, ``avx_vnni``, AMX): one instruction per u8×s8 dot product with a
  32-bit sum. Without it (AVX2-only, AVX-512 before Cascade Lake) int8 runs as an instruction pair
  whose 16-bit intermediate saturates with 8-bit weights: the project quantises weights to 7 bits
  (``sdcpc_core.quantize``), and int8 buys less there than on a VNNI CPU.
- **BF16** (``avx512_bf16``, ``amx_bf16``): native bfloat16 dot products; elsewhere bf16 is emulated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FLAGS_VARIABLE = "SDCPC_CPU_FLAGS"
# the names the docs use -> the /proc/cpuinfo flags that give them
ISA = (("AVX2", ("avx2",)), ("AVX-512", ("avx512f",)), ("VNNI", ("avx512_vnni", "avx_vnni")),
       ("AVX512-BF16", ("avx512_bf16",)), ("AMX", ("amx_tile", "amx_int8", "amx_bf16")))


@dataclass(frozen=True)
class CpuFeatures:
    """The model name and flags of the CPU (``cpu_features()``), with the questions asked of them."""

    model: str
    flags: frozenset
    logical_cpus: int = 0

    def has(self, name: str) -> bool:
        """``name``: one of the ISA names (AVX2, AVX-512, VNNI, AVX512-BF16, AMX)."""
        return any(f in self.flags for f in dict(ISA)[name])

    @property
    def int8_dot(self) -> bool:
        """u8×s8 dot products in one instruction, without the 16-bit saturating step (VNNI/AMX)."""
        return self.has("VNNI") or "amx_int8" in self.flags

    @property
    def bf16_dot(self) -> bool:
        """Native bfloat16 dot products (AVX512-BF16 or AMX-BF16)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def isa(self) -> str:
        """``AVX2 yes, AVX-512 no, VNNI no, AVX512-BF16 no, AMX no``."""
        return ", ".join(f"{name} {'yes' if self.has(name) else 'no'}" for name, _ in ISA)

    @property
    def short(self) -> str:
        """The instruction sets present, for a log line: ``AVX2, AVX-512, VNNI``."""
        present = [name for name, _ in ISA if self.has(name)]
        return ", ".join(present) or "none of AVX2, AVX-512, VNNI, BF16, AMX"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """CpuFeatures from the text of /proc/cpuinfo (the first CPU's flags; every CPU counted)."""
    model, flags, count = "unknown", None, 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model, count = value.strip(), count + 1
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
    return CpuFeatures(model, flags or frozenset(), count)


@lru_cache(maxsize=1)
def _from_machine() -> CpuFeatures:
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuFeatures("unknown (no /proc/cpuinfo)", frozenset(), os.cpu_count() or 0)


def cpu_features() -> CpuFeatures:
    """This CPU's features (``SDCPC_CPU_FLAGS`` replaces its flags where set)."""
    found = _from_machine()
    forced = os.environ.get(FLAGS_VARIABLE)
    if forced is None:
        return found
    return CpuFeatures(f"{found.model} (flags from {FLAGS_VARIABLE})", frozenset(forced.split()),
                       found.logical_cpus)
