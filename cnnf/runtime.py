"""Process-level CPU settings that make training and evaluation faster.

glibc serves allocations above a (dynamic) threshold with fresh mmap pages
and returns freed heap memory to the OS, so the ~25 MB activations of a CNN-F
batch are page-faulted and zeroed again on every step: measured on the 2-core
machine, 15 % of an adversarial training step and 35 % of inference. Keeping
blocks up to 32 MB on the heap and not trimming it removes that cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from pathlib import Path
from typing import Optional

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in the process heap (glibc only; elsewhere a no-op).

    Idempotent; returns True if the settings were applied. The cost is that
    up to ~1 GB of freed memory stays with the process instead of going back
    to the OS.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    )


# --- native bf16 ---------------------------------------------------------------

BF16_ENV = "CNNF_NATIVE_BF16"  # "0" / "1" overrides the detection (tests; a CPU the detection misjudges)


def cpuinfo(field: str) -> Optional[str]:
    """The value of `field` ("model name", "flags", ...) in the first CPU's
    block of /proc/cpuinfo; None where it cannot be read (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name as lscpu prints it, for naming the host beside a figure."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> Optional[frozenset[str]]:
    """The CPU's feature flags (avx2, avx512_bf16, amx_tile, ...); None where /proc/cpuinfo cannot be read."""
    flags = cpuinfo("flags")
    return None if flags is None else frozenset(flags.split())


_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


@functools.cache
def _cpu_has_native_bf16() -> bool:
    import torch

    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls and convolutions run natively on `device`.

    On the CPU that needs AVX512-BF16 or AMX; elsewhere torch emulates bf16
    (on a 2-core AVX2 host a 512x512 bf16 matmul ran ~30x slower than fp32).
    A CUDA device counts as native. CNNF_NATIVE_BF16=0/1 overrides the
    detection, so the slow path can be exercised on any host.
    """
    import os

    forced = os.environ.get(BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{BF16_ENV}={forced!r}: expected 0 or 1")
    if str(device).startswith("cuda"):
        return True
    # oneDNN capped below its bf16 ISA (ONEDNN_MAX_CPU_ISA=AVX2, say) emulates bf16 like an AVX2 CPU.
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_BELOW_BF16:
        return False
    return _cpu_has_native_bf16()


def bf16_note(device: str = "cpu") -> str:
    """Why bf16 is slow here, one line (empty where it runs natively)."""
    if native_bf16(device):
        return ""
    import os

    forced = [f"{k}={os.environ[k]}" for k in (BF16_ENV, "ONEDNN_MAX_CPU_ISA") if os.environ.get(k, "").strip()]
    why = f" (as set by {', '.join(forced)})" if forced else ""
    return (f"this CPU ({cpu_name()}) has no native bf16 (AVX512-BF16 or AMX){why}: bf16 math is emulated and "
            "runs many times slower than fp32 here")
