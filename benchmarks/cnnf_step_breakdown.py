"""Where the time of a CNN-F training step goes, and the ceiling that sets (issue #3).

The step is the one `cnnf_throughput.py` times (`cnnf_fmnist_adv`, ind 2,
1 iteration, PGD-7 against the first pass, 64 clean + 64 adversarial
images, SGD, clipping). One run, per precision:

  - the step's images/s without a profiler (median of `--steps` timed steps);
  - the FLOPs of one step, counted with torch's FLOP formulas (they cover
    only convolutions and matrix products: every FLOP of this model);
  - torch.profiler's self CPU time per op over `--steps` steps, grouped into
    "GEMM" (oneDNN convolutions forward and backward, MKL/oneDNN mm and
    addmm: the kernels that do those FLOPs), "fused kernels" (cnnf.fused's
    instance norm + AdaReLU, compiled or cnnf.native's C kernels, and the
    C pooling kernels: these run inside the autograd functions that call
    them, whose self time the group takes) and "rest" (casts, the
    optimiser, elementwise ops, autograd and Python overhead);
  - the GEMM kernels' achieved GFLOP/s inside the step, against the n x n
    matmul peak measured in the same run;
  - the GEMM ceiling: images/s if everything but the GEMM kernels took no
    time at all, as a multiple of the reference (issue #3: ~100 img/s at a
    fp32 matmul peak of ~180 GFLOP/s, scaled by this run's peak).

The profiler adds overhead to every op, mostly to the many small ones in
"rest"; the GEMM times are long calls and barely change (compare the GEMM
share of the profiled and the unprofiled step). Run it alone.

    .venv/bin/python benchmarks/cnnf_step_breakdown.py [--precision fp32 bf16] [--kernels fused|eager|compiled] [--steps 8] [--peak-seconds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cnnf_throughput import REFERENCE, TRAIN_BATCH, count_flops, make_train_step, matmul_peak  # noqa: E402

from cnnf import fused, native  # noqa: E402
from cnnf.runtime import tune_cpu_allocator  # noqa: E402

# aten::_convolution is in the list because the transposed convolutions of the
# feedback pass run their oneDNN kernel inside it, with no op of their own (its
# self time is ~14 ms per step, the two conv^T of the 128-image batch); for the
# ordinary convolutions it only dispatches to aten::mkldnn_convolution, ~15 us
# per call.
GEMM_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
            "aten::_convolution", "aten::_mkldnn_convolution_transpose", "aten::mkldnn_convolution_backward"}
TARGET = {"fp32": 1.3, "bf16": 2.0}


# The autograd functions of cnnf.functional whose self time, with the C
# kernels on, is a C kernel of cnnf.native (plus the function's Python call);
# in the eager and compiled variants it is Python overhead only.
NATIVE_FUNCTIONS = {f"{name}{suffix}" for name in ("_NormReLU", "_NormAdaReLU", "_L2InstanceNorm", "_MaxPool", "_Unpool", "_AdaPool")
                    for suffix in ("", "Backward")}


def group(name: str, native_on: bool) -> str:
    if name in GEMM_OPS:
        return "GEMM"
    if name.startswith("## Call CompiledFxGraph") or (native_on and name in NATIVE_FUNCTIONS):
        return "fused kernels"
    return "rest"


def breakdown(precision: str, kernels: str, steps: int) -> dict[str, object]:
    """The step's measurements in one precision (the figures relative to the reference: `with_ratios`)."""
    step = make_train_step("cnnf_fmnist_adv", 1, precision, torch.device("cpu"), TRAIN_BATCH)
    flops = count_flops(step)  # a dispatch mode sees the eager ops: the same FLOPs either way
    with fused.use_kernels(kernels != "eager"), native.use_native(kernels == "fused"):
        for _ in range(3):
            step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        step_s = sorted(times)[len(times) // 2]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    per_group: dict[str, float] = {"GEMM": 0.0, "fused kernels": 0.0, "rest": 0.0}
    rest_ops: dict[str, float] = {}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / steps
        g = group(event.key, kernels == "fused")
        per_group[g] += seconds
        if g == "rest":
            rest_ops[event.key] = seconds
    gemm_s = per_group["GEMM"]
    return {
        "precision": precision, "kernels": kernels, "images_per_s": TRAIN_BATCH / step_s, "step_ms": 1e3 * step_s,
        "profiled_step_ms": 1e3 * sum(per_group.values()), "gflop_per_step": flops / 1e9,
        "ms_per_step": {k: 1e3 * v for k, v in per_group.items()},
        "gemm_gflop_per_s": flops / gemm_s / 1e9,
        "gemm_share_of_unprofiled_step": gemm_s / step_s,
        "ceiling_images_per_s": TRAIN_BATCH / gemm_s,
        "top_rest_ms": {k: 1e3 * v for k, v in sorted(rest_ops.items(), key=lambda kv: -kv[1])[:8]},
    }


def with_ratios(r: dict[str, object], peak: dict[str, float]) -> dict[str, object]:
    """r plus its figures as multiples of the reference scaled to this run's fp32 peak."""
    ref_train = REFERENCE["train"] * peak["fp32"] / REFERENCE["peak"]
    at_peak = TRAIN_BATCH / (r["gflop_per_step"] / peak[r["precision"]])  # images/s with the GEMMs at the matmul peak
    return {**r, "x_ref": r["images_per_s"] / ref_train, "ceiling_x_ref": r["ceiling_images_per_s"] / ref_train,
            "ceiling_at_peak_x_ref": at_peak / ref_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--kernels", default="fused", choices=["fused", "eager", "compiled"],
                        help="what fit runs: fused (default); compiled: the fused path without the C kernels")
    parser.add_argument("--steps", type=int, default=8, help="timed and profiled steps per precision")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="timing window of each matmul-peak measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps: must be >= 1")
    if args.peak_seconds <= 0:
        parser.error("--peak-seconds: must be > 0")
    tune_cpu_allocator()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    cpu = torch.device("cpu")
    before = {"fp32": matmul_peak(torch.float32, cpu, args.peak_seconds), "bf16": matmul_peak(torch.bfloat16, cpu, args.peak_seconds)}
    measured = [breakdown(p, args.kernels, args.steps) for p in args.precision]
    after = {"fp32": matmul_peak(torch.float32, cpu, args.peak_seconds), "bf16": matmul_peak(torch.bfloat16, cpu, args.peak_seconds)}
    peak = {k: max(before[k], after[k]) for k in before}
    rows = [with_ratios(r, peak) for r in measured]
    print(f"matmul peak (2048^2, before / after): fp32 {before['fp32']:.0f} / {after['fp32']:.0f} GFLOP/s, "
          f"bf16 {before['bf16']:.0f} / {after['bf16']:.0f} GFLOP/s; reference scaled to fp32 "
          f"{peak['fp32']:.0f}: {REFERENCE['train'] * peak['fp32'] / REFERENCE['peak']:.0f} img/s")
    for r in rows:
        ms = r["ms_per_step"]
        print(f"\n{r['precision']} ({r['kernels']} kernels): {r['images_per_s']:.0f} img/s, {r['step_ms']:.0f} ms/step "
              f"({r['x_ref']:.2f}x ref, target {TARGET[r['precision']]:g}x); {r['gflop_per_step']:.1f} GFLOP/step")
        print(f"  profiled {r['profiled_step_ms']:.0f} ms/step: GEMM {ms['GEMM']:.0f}, fused kernels {ms['fused kernels']:.0f}, "
              f"rest {ms['rest']:.0f}")
        print(f"  GEMM kernels: {r['gemm_gflop_per_s']:.0f} GFLOP/s = {100 * r['gemm_gflop_per_s'] / peak[r['precision']]:.0f} % "
              f"of the {r['precision']} matmul peak; {100 * r['gemm_share_of_unprofiled_step']:.0f} % of the unprofiled step")
        print(f"  GEMM ceiling (everything else free): {r['ceiling_images_per_s']:.0f} img/s = {r['ceiling_x_ref']:.2f}x ref; "
              f"with the GEMMs at the matmul peak too: {r['ceiling_at_peak_x_ref']:.2f}x ref")
        print("  largest of the rest (ms/step): " + ", ".join(f"{k} {v:.1f}" for k, v in r["top_rest_ms"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"peak_gflops": peak, "peak_gflops_before": before, "peak_gflops_after": after, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
