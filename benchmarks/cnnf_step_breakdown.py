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
    matmul peak of the same precision measured in the same run (before and
    after the rows, the higher one counts);
  - the GEMM ceiling: images/s if everything but the GEMM kernels took no
    time at all, and with the GEMMs at the matmul peak too, each also as a
    multiple of the measured step (`x step`): ratios of this run only, no
    figure from another machine.

The host (CPU model, avx2 / avx512f / avx512_bf16 / amx flags, threads) is
printed first and stored under "host" in the JSON. bf16: on a CPU without
native bf16 (AVX512-BF16 or AMX) torch emulates it, ~30x slower than fp32,
so the bf16 row and the bf16 matmul peak are skipped there, the reason
printed once and recorded under "skipped" in the JSON (`--force-bf16` runs
them anyway).

The profiler adds overhead to every op, mostly to the many small ones in
"rest"; the GEMM times are long calls and barely change (compare the GEMM
share of the profiled and the unprofiled step). Run it alone.

The full benchmark (about a minute per precision on 2 cores):

    .venv/bin/python benchmarks/cnnf_step_breakdown.py [--precision fp32 bf16] [--kernels fused|eager|compiled] [--steps 8] [--peak-seconds 2] [--json out.json]

Small-work options, for a smoke test of every code path (figures meaningless):
`--steps 1 --warmup 0 --batch 4 --peak-seconds 0 --peak-size 256`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import add_force_bf16, print_host, runnable_precisions  # noqa: E402
from cnnf_throughput import PEAK_SIZE, TRAIN_BATCH, count_flops, make_train_step, matmul_peak  # noqa: E402

from cnnf import fused, native  # noqa: E402
from cnnf.runtime import tune_cpu_allocator  # noqa: E402

# aten::_convolution is in the list because the transposed convolutions of the
# feedback pass run their oneDNN kernel inside it, with no op of their own (its
# self time is ~14 ms per step, the two conv^T of the 128-image batch); for the
# ordinary convolutions it only dispatches to aten::mkldnn_convolution, ~15 us
# per call.
# The last three are torch's own convolutions (im2col + gemm), which run where oneDNN does not take
# the dtype: bf16 on a CPU without native bf16 (--force-bf16; simulated AVX2, batch 2: ~450 of a ~600 ms step).
GEMM_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
            "aten::_convolution", "aten::_mkldnn_convolution_transpose", "aten::mkldnn_convolution_backward",
            "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::slow_conv_transpose2d"}


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


def breakdown(precision: str, kernels: str, steps: int, batch: int = TRAIN_BATCH, warmup: int = 3) -> dict[str, object]:
    """The step's measurements in one precision (against the matmul peak: `with_peak`)."""
    step = make_train_step("cnnf_fmnist_adv", 1, precision, torch.device("cpu"), batch)
    flops = count_flops(step)  # a dispatch mode sees the eager ops: the same FLOPs either way
    with fused.use_kernels(kernels != "eager"), native.use_native(kernels == "fused"):
        for _ in range(warmup):
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
        "precision": precision, "kernels": kernels, "batch": batch, "images_per_s": batch / step_s, "step_ms": 1e3 * step_s,
        "profiled_step_ms": 1e3 * sum(per_group.values()), "gflop_per_step": flops / 1e9,
        "ms_per_step": {k: 1e3 * v for k, v in per_group.items()},
        "gemm_gflop_per_s": flops / gemm_s / 1e9,
        "gemm_share_of_unprofiled_step": gemm_s / step_s,
        "ceiling_images_per_s": batch / gemm_s,
        "top_rest_ms": {k: 1e3 * v for k, v in sorted(rest_ops.items(), key=lambda kv: -kv[1])[:8]},
    }


def with_peak(r: dict[str, object], peak: dict[str, float]) -> dict[str, object]:
    """r plus its GEMMs against this run's matmul peak of its precision, and its ceilings over its measured step."""
    at_peak = r["batch"] / (r["gflop_per_step"] / peak[r["precision"]])  # images/s with the GEMMs at the matmul peak
    return {**r, "gemm_share_of_peak": r["gemm_gflop_per_s"] / peak[r["precision"]],
            "ceiling_x_step": r["ceiling_images_per_s"] / r["images_per_s"],
            "ceiling_at_peak_images_per_s": at_peak, "ceiling_at_peak_x_step": at_peak / r["images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="bf16 is skipped on a CPU without native bf16 (see --force-bf16)")
    add_force_bf16(parser)
    parser.add_argument("--kernels", default="fused", choices=["fused", "eager", "compiled"],
                        help="what fit runs: fused (default); compiled: the fused path without the C kernels")
    parser.add_argument("--steps", type=int, default=8, help="timed and profiled steps per precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per precision before timing")
    parser.add_argument("--batch", type=int, default=TRAIN_BATCH, help="clean images per step (as many adversarial ones)")
    parser.add_argument("--peak-seconds", type=float, default=2.0,
                        help="timing window of each matmul-peak measurement (0: one timed matmul)")
    parser.add_argument("--peak-size", type=int, default=PEAK_SIZE["cpu"], help="n of the n x n peak matmul")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    for name in ("steps", "batch", "peak_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.warmup < 0 or args.peak_seconds < 0:
        parser.error("--warmup, --peak-seconds: must be >= 0")
    tune_cpu_allocator()
    cpu = torch.device("cpu")
    host = print_host(cpu)
    precisions, skipped = runnable_precisions(args.precision, cpu, args.force_bf16, "bf16 row and the bf16 matmul peak")
    # The fp32 peak always (context); the bf16 one only where the bf16 row runs.
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if "bf16" in precisions else {})

    def peaks() -> dict[str, float]:
        return {p: matmul_peak(dtype, cpu, args.peak_seconds, args.peak_size) for p, dtype in dtypes.items()}

    before = peaks()
    measured = [breakdown(p, args.kernels, args.steps, args.batch, args.warmup) for p in precisions]
    after = peaks()
    peak = {k: max(before[k], after[k]) for k in before}
    rows = [with_peak(r, peak) for r in measured]
    print(f"matmul peak ({args.peak_size}^2, before / after): "
          + ", ".join(f"{k} {before[k]:.0f} / {after[k]:.0f} GFLOP/s" for k in peak))
    if not rows:
        print("nothing left to measure")
    for r in rows:
        ms = r["ms_per_step"]
        print(f"\n{r['precision']} ({r['kernels']} kernels, batch {r['batch']}): {r['images_per_s']:.0f} img/s, "
              f"{r['step_ms']:.0f} ms/step; {r['gflop_per_step']:.1f} GFLOP/step")
        print(f"  profiled {r['profiled_step_ms']:.0f} ms/step: GEMM {ms['GEMM']:.0f}, fused kernels {ms['fused kernels']:.0f}, "
              f"rest {ms['rest']:.0f}")
        print(f"  GEMM kernels: {r['gemm_gflop_per_s']:.0f} GFLOP/s = {100 * r['gemm_share_of_peak']:.0f} % "
              f"of the {r['precision']} matmul peak; {100 * r['gemm_share_of_unprofiled_step']:.0f} % of the unprofiled step")
        print(f"  GEMM ceiling (everything else free): {r['ceiling_images_per_s']:.0f} img/s = {r['ceiling_x_step']:.2f}x step; "
              f"with the GEMMs at the matmul peak too: {r['ceiling_at_peak_images_per_s']:.0f} img/s = "
              f"{r['ceiling_at_peak_x_step']:.2f}x step")
        print("  largest of the rest (ms/step): " + ", ".join(f"{k} {v:.1f}" for k, v in r["top_rest_ms"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"host": host, "settings": {k: v for k, v in vars(args).items() if k != "json"}, "skipped": skipped,
                       "peak_gflops": peak, "peak_gflops_before": before, "peak_gflops_after": after, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
