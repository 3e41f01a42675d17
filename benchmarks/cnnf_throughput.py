"""CNN-F training and inference throughput, measured in one run (issue #3).

Setting (cnnf-spec B.2, the released Fashion-MNIST model): `cnnf_fmnist_adv`,
ind 2, 1 feedback iteration, adversarial training with PGD-7 against the
first pass, 64 clean + 64 adversarial images per step; inference of the
averaged logits at batch 256. The plain CNN of the same backbone
(`cnn_fmnist_adv`) runs the same training (PGD-7, clean + adversarial) with
0 iterations.

Everything printed comes from this run: images/s, FLOPs per image counted
with torch.utils.flop_counter (convolutions and matmuls, forward and
backward), the achieved GFLOP/s, and this machine's fp32 and bf16 matmul
peaks measured before and after the rows (the higher one counts). The
reference implementation's throughput is quoted for a quiet 2-core machine
(issue #3: ~100 clean images/s training, ~1,200 images/s inference, at a
fp32 matmul peak of ~180 GFLOP/s); scaled by the peak measured here it gives
the reference-equivalent figure, and `x ref` is our throughput over it
(`x quoted`: over the quoted figures, unscaled). Scaling by the peak assumes
the reference's time grows with the matmul peak, which holds only for its
GEMMs: on a host with a much higher peak than the quoted one it overstates
the reference. `x eager` (printed when the fp32 eager variant runs) is the
ratio to this run's fp32 eager CNN-F, the same math in plain PyTorch ops,
the one comparison measured entirely on this machine. Run it alone: the
machine is shared and any other load lowers every figure.

With `--device cuda` the same rows run on the GPU (timings synchronised,
matmul peaks measured on the GPU); the quoted reference is a CPU figure, so
the `x ref` columns are left empty there. `--train-batch` / `--infer-batch`
change the batch sizes (a GPU is launch-bound at batch 64).

`--kernels fused eager compiled` also times the eager instance norms /
AdaReLUs / pooling, and the fused path with torch.compile's kernels only
(cnnf.native's C kernels off: `compiled`); `fused` is the fused path with the
C kernels serving what they can (cnnf.fused; `fit` uses it on the CPU for runs of 1000 steps
or more, so `fused` is what a real training run executes; on a GPU all are
eager). The variants of one row are timed in alternating rounds, so their
ratio is robust to the machine's load drifting during the run.

    .venv/bin/python benchmarks/cnnf_throughput.py [--precision fp32 bf16] [--kernels fused eager compiled] [--seconds 8] [--peak-seconds 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from cnnf import fused, native
from cnnf.config import TrainConfig
from cnnf.models import InferenceModel, create_model
from cnnf.runtime import tune_cpu_allocator
from cnnf.train import TrainStep, build_optimizer, build_scheduler

REFERENCE = {"train": 100.0, "infer": 1200.0, "peak": 180.0}  # issue #3, quiet machine, fp32
TRAIN_BATCH, INFER_BATCH = 64, 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """GFLOP/s of an n x n matmul (n = 2048 on the CPU, 8192 on a GPU), best of repeated timings."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
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


def time_interleaved(fns: dict[str, Callable[[], object]], seconds: float, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each variant, the variants called in
    alternating rounds (one call each, the order flipped every round) for
    about `seconds` per variant: drift in the machine's load then hits every
    variant alike, and their ratio holds even when the absolute figures move."""
    names = list(fns)
    for name in names:
        fns[name]()
        fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    t_end = time.perf_counter() + seconds * len(names)
    k = 0
    while time.perf_counter() < t_end or min(len(v) for v in times.values()) < 5:
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
    step = TrainStep(net, tc, optimizer, build_scheduler(optimizer, tc, 10**6))
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
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--kernels", nargs="+", default=["fused"], choices=["fused", "eager", "compiled"],
                        help="instance norm + AdaReLU + pooling on the fused CPU path (what fit runs), eager ops, "
                             "and/or the fused path without the C kernels")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window per measurement")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="timing window of each matmul-peak measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--train-batch", type=int, default=TRAIN_BATCH, help="clean images per training step")
    parser.add_argument("--infer-batch", type=int, default=INFER_BATCH)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    on_cpu = device.type == "cpu"
    train_batch, infer_batch = args.train_batch, args.infer_batch

    if on_cpu:
        tune_cpu_allocator()  # as fit() and evaluate() do
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    else:
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    print(f"batches: train {train_batch} clean + {train_batch} adversarial, inference {infer_batch}")
    if args.peak_seconds <= 0:
        parser.error("--peak-seconds: must be > 0")
    before = {"fp32": matmul_peak(torch.float32, device, args.peak_seconds), "bf16": matmul_peak(torch.bfloat16, device, args.peak_seconds)}

    rows: list[Row] = []
    kernel_choices = args.kernels if on_cpu else ["eager"]
    for precision in args.precision:
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
            for kernels, sec in time_interleaved(variants, args.seconds, device).items():
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
    # used: a peak taken during a burst of outside load would inflate `x ref`.
    after = {"fp32": matmul_peak(torch.float32, device, args.peak_seconds), "bf16": matmul_peak(torch.bfloat16, device, args.peak_seconds)}
    peak = {k: max(before[k], after[k]) for k in before}
    n = 8192 if device.type == "cuda" else 2048
    print(f"matmul peak ({n}^2 on {device.type}, before / after the rows): fp32 {before['fp32']:.0f} / {after['fp32']:.0f} GFLOP/s, "
          f"bf16 {before['bf16']:.0f} / {after['bf16']:.0f} GFLOP/s")
    ref = {k: REFERENCE[k] * peak["fp32"] / REFERENCE["peak"] for k in ("train", "infer")}
    if on_cpu:
        print(f"reference scaled to this run's fp32 peak ({peak['fp32']:.0f}): train {ref['train']:.0f} img/s, infer {ref['infer']:.0f} img/s; "
              f"as quoted (at {REFERENCE['peak']:.0f}): train {REFERENCE['train']:.0f}, infer {REFERENCE['infer']:.0f}")

    # `x eager`: against this run's fp32 eager CNN-F, the same math in plain
    # PyTorch ops (the way the reference computes it), measured on this
    # machine; the one ratio here that needs no figure from another machine.
    eager = {r.what: r.images_per_s for r in rows if r.precision == "fp32"}
    x_eager = {(r.what, r.precision): r.images_per_s / eager[r.what] for r in rows if r.what.startswith("CNN-F") and r.what in eager}
    print(f"\n{'':12} {'prec':10} {'img/s':>8} {'GFLOP/img':>10} {'GFLOP/s':>8} {'% fp32 peak':>11} {'x ref':>6} {'x quoted':>8} "
          f"{'x eager':>7}")
    for r in rows:
        kind = "train" if "train" in r.what else "infer"
        cnnf = r.what.startswith("CNN-F") and on_cpu  # the quoted reference is a CPU figure
        x_ref = f"{r.images_per_s / ref[kind]:.2f}" if cnnf else ""
        x_quoted = f"{r.images_per_s / REFERENCE[kind]:.2f}" if cnnf else ""
        x_eag = f"{x_eager[r.what, r.precision]:.2f}" if (r.what, r.precision) in x_eager else ""
        print(f"{r.what:12} {r.precision:10} {r.images_per_s:8.0f} {r.gflop_per_image:10.3f} {r.gflop_per_s:8.0f} "
              f"{100 * r.gflop_per_s / peak['fp32']:10.0f}% {x_ref:>6} {x_quoted:>8} {x_eag:>7}")
    print()
    for precision in dict.fromkeys(r.precision for r in rows):
        by = {r.what: r for r in rows if r.precision == precision}
        for kind in ("train", "infer"):
            f, c = by[f"CNN-F {kind}"], by[f"CNN {kind}"]
            print(f"{precision} {kind}: CNN-F/CNN time ratio {c.images_per_s / f.images_per_s:.2f}, "
                  f"FLOP ratio {f.gflop_per_image / c.gflop_per_image:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "train_batch": train_batch, "infer_batch": infer_batch,
                       "peak_gflops": peak, "peak_gflops_before": before, "peak_gflops_after": after,
                       "reference_scaled": ref if on_cpu else None, "rows": [r.__dict__ for r in rows],
                       "x_fp32_eager": {f"{what} {precision}": x for (what, precision), x in x_eager.items()}}, fh, indent=2)


if __name__ == "__main__":
    main()
