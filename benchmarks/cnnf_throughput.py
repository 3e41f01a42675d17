"""CNN-F training and inference throughput, measured in one run (issue #3).

Setting (cnnf-spec B.2, the released Fashion-MNIST model): `cnnf_fmnist_adv`,
ind 2, 1 feedback iteration, adversarial training with PGD-7 against the
first pass, 64 clean + 64 adversarial images per step; inference of the
averaged logits at batch 256. The plain CNN of the same backbone
(`cnn_fmnist_adv`) runs the same training (PGD-7, clean + adversarial) with
0 iterations.

Everything printed comes from this run, on the host named at the top (CPU
model, its avx2 / avx512f / avx512_bf16 / amx flags, threads): images/s,
FLOPs per image counted with torch.utils.flop_counter (convolutions and
matmuls, forward and backward), the achieved GFLOP/s and, for context, its
share of this machine's fp32 matmul peak (`% fp32 peak`; measured before and
after the rows, the higher one counts). The one comparison is `x eager`:
each CNN-F row over this run's fp32 eager CNN-F, the same math in plain
PyTorch ops (printed when the fp32 eager variant runs, i.e. with
`--kernels ... eager`). No figure from another machine is quoted or scaled.
Run it alone: the machine is shared and any other load lowers every figure.

bf16: on a CPU without native bf16 (AVX512-BF16 or AMX) torch emulates it,
~30x slower than fp32, so the bf16 rows and the bf16 matmul peak are skipped
there: the reason is printed once and recorded under "skipped" in the JSON
(`--force-bf16` runs them anyway). Where bf16 rows run, the bf16 matmul peak
is printed beside the fp32 one.

With `--device cuda` the same rows run on the GPU (timings synchronised,
matmul peaks measured on the GPU). `--train-batch` / `--infer-batch` change
the batch sizes (a GPU is launch-bound at batch 64); FLOPs per image do not
depend on them.

`--kernels fused eager compiled` also times the eager instance norms /
AdaReLUs / pooling, and the fused path with torch.compile's kernels only
(cnnf.native's C kernels off: `compiled`); `fused` is the fused path with the
C kernels serving what they can (cnnf.fused; `fit` uses it on the CPU for runs of 1000 steps
or more, so `fused` is what a real training run executes; on a GPU all are
eager). The variants of one row are timed in alternating rounds, so their
ratio is robust to the machine's load drifting during the run.

The full benchmark (a few minutes on 2 cores):

    .venv/bin/python benchmarks/cnnf_throughput.py [--precision fp32 bf16] [--kernels fused eager compiled] [--seconds 8] [--peak-seconds 2] [--device cpu|cuda] [--json out.json]

Small-work options, for a smoke test of every code path (figures meaningless):
`--seconds 0 --min-rounds 1 --warmup 0 --peak-seconds 0 --peak-size 256
--train-batch 4 --infer-batch 8`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from cnnf import fused, native
from cnnf.config import TrainConfig
from cnnf.models import InferenceModel, create_model
from cnnf.runtime import tune_cpu_allocator
from cnnf.train import TrainStep, build_optimizer, build_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _host, when imported from another benchmark
from _host import add_force_bf16, print_host, runnable_precisions  # noqa: E402

TRAIN_BATCH, INFER_BATCH = 64, 256
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}  # n of the n x n matmul whose GFLOP/s is the peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 2.0, n: int | None = None) -> float:
    """GFLOP/s of an n x n matmul (default n: PEAK_SIZE, 2048 on the CPU, 8192 on a GPU), best of
    repeated timings over `seconds` (at least one timed call, so seconds=0 still measures)."""
    n = n or PEAK_SIZE[device.type]
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while best == 0.0 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


class _FlopCount(TorchDispatchMode):
    """Sums torch's own FLOP formulas (conv, mm, addmm, bmm, ... forward and
    backward) over every op dispatched. FlopCounterMode itself cannot be
    used: its module tracker breaks torch.autograd.grad, which PGD calls."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    with _FlopCount() as counter:
        fn()
    return counter.total


def time_interleaved(fns: dict[str, Callable[[], object]], seconds: float, device: torch.device,
                     warmup: int = 2, min_rounds: int = 5) -> dict[str, float]:
    """Median seconds per call of each variant, the variants called in
    alternating rounds (one call each, the order flipped every round) for
    about `seconds` per variant and at least `min_rounds` rounds, after
    `warmup` untimed calls of each: drift in the machine's load then hits every
    variant alike, and their ratio holds even when the absolute figures move."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    t_end = time.perf_counter() + seconds * len(names)
    k = 0
    while time.perf_counter() < t_end or min(len(v) for v in times.values()) < min_rounds:
        for name in names if k % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        k += 1
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


@dataclass
class Row:
    what: str
    precision: str  # "fp32" / "bf16", with "+fused" when the fused CPU kernels ran ("+compiled": without the C kernels)
    images_per_s: float
    gflop_per_image: float
    gflop_per_s: float


def make_train_step(arch: str, n_iterations: int, precision: str, device: torch.device,
                    batch: int) -> Callable[[], object]:
    ind = 2 if n_iterations else 0
    tc = TrainConfig(batch_size=batch, optimizer="sgd", lr=0.05, lr_schedule="poly", grad_clip=0.5,
                     adv_eps_linf=0.1, adv_steps=7, clean_coef=0.1, n_iterations=n_iterations,
                     precision=precision, device=device.type)
    torch.manual_seed(0)
    net = create_model(arch, ind=ind).to(device)
    optimizer = build_optimizer(net, tc)
    step = TrainStep(net, tc, optimizer, build_scheduler(optimizer, tc, 10**6), "fashion-mnist")
    x = (torch.rand(batch, 1, 28, 28) * 2 - 1).to(device)
    y = torch.randint(0, 10, (batch,)).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    return lambda: step(x, y, g)


def make_inference(arch: str, n_iterations: int, precision: str, device: torch.device,
                   batch: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """(timed run under inference_mode, the same under no_grad for FLOP counting:
    a dispatch mode does not see the ops of inference-mode tensors)."""
    torch.manual_seed(0)
    net = create_model(arch, ind=2 if n_iterations else 0).to(device).eval()
    model = InferenceModel(net, n_iterations, "avg" if n_iterations else "first")
    x = (torch.rand(batch, 1, 28, 28) * 2 - 1).to(device)

    def run(mode: Callable[[], object]) -> Callable[[], object]:
        def call() -> torch.Tensor:
            with mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return model(x)
        return call

    return run(torch.inference_mode), run(torch.no_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="bf16 is skipped on a CPU without native bf16 (see --force-bf16)")
    add_force_bf16(parser)
    parser.add_argument("--kernels", nargs="+", default=["fused"], choices=["fused", "eager", "compiled"],
                        help="instance norm + AdaReLU + pooling on the fused CPU path (what fit runs), eager ops, "
                             "and/or the fused path without the C kernels")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window per measurement")
    parser.add_argument("--min-rounds", type=int, default=5, help="timed calls per variant at least, whatever --seconds")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls per variant before timing (after the one that compiles the fused kernels)")
    parser.add_argument("--peak-seconds", type=float, default=2.0,
                        help="timing window of each matmul-peak measurement (0: one timed matmul)")
    parser.add_argument("--peak-size", type=int, help="n of the n x n peak matmul (default 2048 on the CPU, 8192 on a GPU)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--train-batch", type=int, default=TRAIN_BATCH, help="clean images per training step")
    parser.add_argument("--infer-batch", type=int, default=INFER_BATCH)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.peak_seconds < 0 or args.seconds < 0:
        parser.error("--seconds, --peak-seconds: must be >= 0")
    for name in ("min_rounds", "train_batch", "infer_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup: must be >= 0")
    on_cpu = device.type == "cpu"
    train_batch, infer_batch = args.train_batch, args.infer_batch
    peak_n = args.peak_size or PEAK_SIZE[device.type]

    if on_cpu:
        tune_cpu_allocator()  # as fit() and evaluate() do
    host = print_host(device)
    precisions, skipped = runnable_precisions(args.precision, device, args.force_bf16, "bf16 rows and the bf16 matmul peak")
    settings = {"precision": args.precision, "kernels": args.kernels if on_cpu else ["eager"], "seconds": args.seconds,
                "min_rounds": args.min_rounds, "warmup": args.warmup, "peak_seconds": args.peak_seconds, "peak_size": peak_n,
                "force_bf16": args.force_bf16}
    if not precisions:  # --precision bf16 alone, skipped: nothing left to measure
        print("nothing left to measure")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"host": host, "device": str(device), "settings": settings, "skipped": skipped, "rows": []}, fh, indent=2)
        return
    print(f"batches: train {train_batch} clean + {train_batch} adversarial, inference {infer_batch}")
    # The fp32 peak is context for every row (`% fp32 peak`); the bf16 one only where bf16 rows run.
    peak_dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if "bf16" in precisions else {})

    def peaks() -> dict[str, float]:
        return {k: matmul_peak(dtype, device, args.peak_seconds, peak_n) for k, dtype in peak_dtypes.items()}

    before = peaks()

    rows: list[Row] = []
    kernel_choices = args.kernels if on_cpu else ["eager"]
    for precision in precisions:
        def scoped(fn: Callable[[], object], kernels: str) -> Callable[[], object]:
            def call() -> object:
                with fused.use_kernels(kernels != "eager"), native.use_native(kernels == "fused"):
                    return fn()
            return call

        def measure(what: str, fn: Callable[[], object], counted: Callable[[], object], batch: int) -> None:
            variants = {k: scoped(fn, k) for k in kernel_choices}
            for call in variants.values():
                call()  # compiles the kernels when fused
            flops = count_flops(counted) / batch  # a dispatch mode sees the eager ops: the same FLOPs either way
            for kernels, sec in time_interleaved(variants, args.seconds, device, args.warmup, args.min_rounds).items():
                label = precision + ("" if kernels == "eager" else f"+{kernels}")
                rows.append(Row(what, label, batch / sec, flops / 1e9, flops * batch / sec / 1e9))

        for what, arch, t in (("CNN-F train", "cnnf_fmnist_adv", 1), ("CNN train", "cnn_fmnist_adv", 0)):
            step = make_train_step(arch, t, precision, device, train_batch)
            measure(what, step, step, train_batch)
        for what, arch, t in (("CNN-F infer", "cnnf_fmnist_adv", 1), ("CNN infer", "cnn_fmnist_adv", 0)):
            run, run_counted = make_inference(arch, t, precision, device, infer_batch)
            measure(what, run, run_counted, infer_batch)
    rows.sort(key=lambda r: (r.precision, ("CNN-F train", "CNN train", "CNN-F infer", "CNN infer").index(r.what)))

    # The peaks are measured before and after the rows and the higher one is
    # used: a peak taken during a burst of outside load would understate it.
    after = peaks()
    peak = {k: max(before[k], after[k]) for k in before}
    print(f"matmul peak, context only ({peak_n}^2 on {device.type}, before / after the rows): "
          + ", ".join(f"{k} {before[k]:.0f} / {after[k]:.0f} GFLOP/s" for k in peak))

    # `x eager`: against this run's fp32 eager CNN-F, the same math in plain
    # PyTorch ops, measured on this machine in this run.
    eager = {r.what: r.images_per_s for r in rows if r.precision == "fp32"}
    x_eager = {(r.what, r.precision): r.images_per_s / eager[r.what] for r in rows if r.what.startswith("CNN-F") and r.what in eager}
    print(f"\n{'':12} {'prec':10} {'img/s':>8} {'GFLOP/img':>10} {'GFLOP/s':>8} {'% fp32 peak':>11} {'x eager':>7}")
    for r in rows:
        x_eag = f"{x_eager[r.what, r.precision]:.2f}" if (r.what, r.precision) in x_eager else ""
        print(f"{r.what:12} {r.precision:10} {r.images_per_s:8.0f} {r.gflop_per_image:10.3f} {r.gflop_per_s:8.0f} "
              f"{100 * r.gflop_per_s / peak['fp32']:10.0f}% {x_eag:>7}")
    if not x_eager:
        print("(x eager: add `eager` to --kernels, with fp32 in --precision)")
    print()
    for precision in dict.fromkeys(r.precision for r in rows):
        by = {r.what: r for r in rows if r.precision == precision}
        for kind in ("train", "infer"):
            f, c = by[f"CNN-F {kind}"], by[f"CNN {kind}"]
            print(f"{precision} {kind}: CNN-F/CNN time ratio {c.images_per_s / f.images_per_s:.2f}, "
                  f"FLOP ratio {f.gflop_per_image / c.gflop_per_image:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"host": host, "device": str(device), "train_batch": train_batch, "infer_batch": infer_batch,
                       "settings": settings, "skipped": skipped,
                       "peak_gflops": peak, "peak_gflops_before": before, "peak_gflops_after": after,
                       "rows": [r.__dict__ for r in rows],
                       "x_fp32_eager": {f"{what} {precision}": x for (what, precision), x in x_eager.items()}}, fh, indent=2)


if __name__ == "__main__":
    main()
