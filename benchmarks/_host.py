"""What the benchmark scripts share: naming the host beside every figure, and
skipping bf16 where this CPU would only emulate it.

A figure means little without the machine it was measured on, and the
project reports only ratios measured in the same run, so every script that
prints timings starts with `print_host` (the CPU model, the ISA flags that
decide its matmul speed, the CPU count, torch's threads) and stores the
same description under "host" in its JSON.

bf16: on a CPU without AVX512-BF16 or AMX, torch emulates bf16 math (a
512x512 bf16 matmul ran at 1.1 GFLOP/s against 36.8 in fp32 on a 2-core AVX2
EPYC), so a bf16 row or bf16 matmul peak would take minutes and measure only
the emulation. The scripts skip them there (`bf16_skip`), print the reason
once and record it under "skipped" in their JSON; `--force-bf16` runs them
anyway. The detection itself is cnnf.runtime's (native_bf16, bf16_note),
not repeated here.

The scripts run as `python benchmarks/<name>.py`, so this folder is first on
sys.path and `import _host` finds this module.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cnnf.runtime import BF16_ENV, bf16_note, cpu_flags, cpu_name

# The /proc/cpuinfo flags that decide the matmul speed of fp32 and bf16 here:
# avx512_bf16 or AMX (amx_tile / amx_bf16) is what makes bf16 native.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# Environment settings that change what the CPU runs (an AVX2 host simulated on
# an AVX-512 one, say): printed beside the flags so a figure is not read as the hardware's.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", BF16_ENV)
FORCE_BF16_FLAG = "--force-bf16"


def describe_host(device: Any = "cpu", with_torch: bool = True) -> dict[str, Any]:
    """The host as a JSON-ready dict: CPU model, ISA flags, CPU count, load, ISA overrides in the
    environment, and (with_torch) torch's version, threads, kernel ISA and the bf16 verdict.

    with_torch=False leaves torch unimported (sweep_overhead.py times the import itself) and leaves
    out the bf16 verdict, which needs torch to ask the CPU.
    """
    flags = cpu_flags()
    host: dict[str, Any] = {
        "cpu": cpu_name(),
        "isa": None if flags is None else {f: f in flags for f in ISA_FLAGS},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in ISA_ENV if os.environ.get(k)},
    }
    if with_torch:
        import torch

        host |= {"torch": torch.__version__, "threads": torch.get_num_threads(),
                 # the ISA torch's own CPU kernels dispatch to (ATEN_CPU_CAPABILITY lowers it)
                 "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "device": str(device), "native_bf16": not bf16_note(str(device))}
        if str(device).startswith("cuda") and torch.cuda.is_available():
            host["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return host


def host_line(host: dict[str, Any]) -> str:
    """One or two lines naming the host, for the top of a benchmark's output."""
    isa = host["isa"]
    flags = "flags unknown" if isa is None else ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in isa.items())
    parts = [f"host: {host['cpu']} ({flags}); {host['cpus']} CPUs"]
    if "torch" in host:
        parts.append(f"torch {host['torch']}, {host['threads']} threads, kernels {host['torch_cpu_capability']}")
        parts.append(f"native bf16: {'yes' if host['native_bf16'] else 'no'}")
    if host.get("gpu"):
        parts.append(f"GPU {host['gpu']}")
    if host["load_average"] is not None:
        parts.append(f"load average {host['load_average']:.2f}")
    line = "; ".join(parts)
    if host["env"]:
        line += "\n      set in the environment: " + " ".join(f"{k}={v}" for k, v in host["env"].items())
    return line


def print_host(device: Any = "cpu", with_torch: bool = True) -> dict[str, Any]:
    """Print the host line and return its description (for the JSON's "host")."""
    host = describe_host(device, with_torch)
    print(host_line(host), flush=True)
    return host


def add_force_bf16(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(FORCE_BF16_FLAG, action="store_true",
                        help="run the bf16 rows even on a CPU without native bf16 (AVX512-BF16 / AMX), where torch emulates "
                             "bf16 and they take many times longer than fp32 (minutes)")


def bf16_skip(device: Any, force: bool, what: str = "bf16 rows", announce: bool = True) -> str:
    """'' when bf16 work should run on `device`; else why it is skipped, one line.

    Prints that line (announce=False: the caller prints it) or, with `force` on an emulating CPU,
    a warning: call it once per run, so the reason is printed once.
    """
    note = bf16_note(str(device))
    if not note:
        return ""
    if force:
        print(f"WARNING: {note}; {FORCE_BF16_FLAG}: running the {what} anyway", file=sys.stderr, flush=True)
        return ""
    reason = f"{note}; the {what} are skipped ({FORCE_BF16_FLAG} runs them)"
    if announce:
        print(f"skipped: {reason}", flush=True)
    return reason


def runnable_precisions(requested: list[str], device: Any, force: bool, what: str) -> tuple[list[str], dict[str, str]]:
    """The requested precisions (duplicates dropped, order kept) less bf16 where `bf16_skip` skips it,
    and the skip as the JSON's "skipped" entry ({"bf16": reason}, or {})."""
    precisions = list(dict.fromkeys(requested))
    if "bf16" in precisions:
        reason = bf16_skip(device, force, what)
        if reason:
            precisions.remove("bf16")
            return precisions, {"bf16": reason}
    return precisions, {}
