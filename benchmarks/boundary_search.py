"""Boundary-search cost: the naive loop against the batched work-queue scan,
measured in one run (fl-spec "Cost", issue #5).

Workload: the small MNIST CNN `cnn_mnist_small` (through its only pass,
`InferenceModel(net, 0, "first")`), trained here for `--epochs` epochs on
the local MNIST training split (seeded; `--weights` loads a state dict or a
`cnnf.train` checkpoint instead), its test accuracy printed so the figures
come from a real model. `--samples` S correctly classified training samples
(`fl.search.draw_samples`, stratified) are searched along `--directions` D
random orthogonal directions (`fl.directions.orthogonal_directions`) in both
signs, at the paper's step 0.02 and range 0.5 (25 steps), every point
clipped to the pixel range as He et al.'s search does (`search.clip`, the
default; the naive loop clips the same way).

Measured, in this order:
  - the naive loop (`fl.search.naive_scan`: one image per forward call,
    sample by sample, direction by direction, step by step) on the first
    samples, one sample at a time until `--seconds` have passed (or exactly
    `--naive-samples`); it is too slow to run on all S. Its rate
    (forward passes / s) is measured on that subset; since the naive loop
    does exactly the exact scan's forward passes, its cost on all S samples
    is the exact scan's forward passes over that rate (`naive*` in the
    table, the base of every speedup);
  - the batched exact scan in fp32 (`fl.search.scan`, mode "exact"); its
    margins and adjacent classes must be bitwise equal (torch.equal) to the
    naive loop's on the samples both ran, or the script exits with status 1
    (on the CPU; on a GPU the one-image and the batched forward run other
    kernels and a point on the boundary can round either way, so there the
    scan must agree with the naive loop like the bf16 target below: same
    adjacent class, margin within one step, on >= 99 % of searches);
  - the exact scan under bf16 autocast; agreement with fp32 = the share of
    searches with the same adjacent class and a margin within one step
    (bf16 rows, this one and c2f bf16: only where bf16 is native, see below);
  - coarse-to-fine (every `--coarse-factor`-th step, then bisection inside
    the first flipped bracket; an approximation, fewer forward passes) in
    fp32 and, unless `--no-c2f-bf16`, in bf16: adjacent-class agreement
    with the exact fp32 scan and the margin error (mean and max absolute,
    share of searches with exactly the same margin).
Every batched configuration is warmed up on one sample first, then timed
over all S samples (best of `--repeats`). Also timed: the model's own
single-image forward pass (batch 1, no search around it), the ceiling of
any per-image loop.

Per row: forward passes per sample (counted), images/s = forward passes / s,
seconds per sample, and the speedup in wall time per sample over the naive
loop: the end-to-end figure (exact modes do the same forward passes as the
naive loop, so for them it is the ratio of images/s; coarse-to-fine does
fewer). The issue's targets are printed as PASS/FAIL lines: exact fp32 >= 2x
the naive loop, bf16 >= 5x with >= 99 % agreement, coarse-to-fine >= 10x
with >= 99 % adjacent-class agreement. Also printed: the share of N/A
searches (the paper: ~79 % on MNIST; it depends on the model) and the
projected time of the paper-scale search (1,500 samples x 784 directions x
2 signs) at each measured rate, using this run's forward passes per search.

The host (CPU model, avx2 / avx512f / avx512_bf16 / amx flags, threads) is
printed first and stored under "host" in the JSON. On a CPU without native
bf16 (AVX512-BF16 or AMX) torch emulates bf16, many times slower than fp32:
there the bf16 rows (exact bf16, c2f bf16) and their targets are skipped,
the reason printed once and recorded under "skipped" in the JSON
(`--force-bf16` runs them anyway).

The full benchmark: a default CPU run takes about 3 minutes on 2 cores. Run
it alone: the machine is shared and any other load lowers every figure (the
load average is printed before and after).

    .venv/bin/python benchmarks/boundary_search.py [--samples 100] [--directions 128] [--seconds 30] \\
        [--device cpu|cuda] [--threads N] [--weights state.pt] [--json out.json]

Small-work options, for a smoke test of every code path (figures meaningless):
`--samples 4 --directions 4 --naive-samples 2 --epochs 1 --n-train 1000
--reference-seconds 0`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from cnnf.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.data import DATA_ROOT_ENV, DataNotFoundError, DataSplits, load_splits, resolve_root
from cnnf.models import InferenceModel, create_model
from cnnf.runtime import tune_cpu_allocator
from cnnf.train import accuracy, fit
from fl.config import SearchConfig
from fl.directions import orthogonal_directions
from fl.search import NA, Margins, draw_samples, naive_scan, scan

ARCH = "cnn_mnist_small"
PAPER_SAMPLES, PAPER_DIRECTIONS = 1500, 784  # fl-spec: MNIST at paper scale
TARGETS = {"exact fp32": 2.0, "exact bf16": 5.0, "c2f fp32": 10.0, "c2f bf16": 10.0}  # speedup over the naive loop
AGREEMENT_TARGET = 0.99
BUSY_SHARE = 0.1  # other processes' share of the CPUs above which the run is flagged as unreliable
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import add_force_bf16, bf16_skip, print_host  # noqa: E402


def cpu_snapshot() -> Optional[tuple[float, float, float]]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process), or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    t = os.times()
    return time.perf_counter(), (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def other_cpu_share(before: Optional[tuple[float, float, float]], after: Optional[tuple[float, float, float]]) -> Optional[float]:
    """Share of the machine's CPU time that other processes (and the hypervisor) took between two snapshots."""
    if before is None or after is None:
        return None
    wall, busy, own = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_data_root() -> Optional[str]:
    """--data-root's default: $CNNF_DATA_ROOT, else the shared offline folder if it holds MNIST, else None (./data)."""
    for c in (os.environ.get(DATA_ROOT_ENV), "/work/shared/datasets", str(REPO.parent / "shared" / "datasets")):
        if c and (Path(c) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return c
    return os.environ.get(DATA_ROOT_ENV)


@dataclass
class Row:
    what: str  # "naive", "exact fp32", "exact bf16", "c2f fp32", "c2f bf16"
    mode: str
    precision: str
    samples: int
    forward_passes: int
    seconds: float
    forward_per_sample: float = 0.0
    images_per_s: float = 0.0
    seconds_per_sample: float = 0.0
    speedup: float = 0.0  # naive seconds per sample (on the S samples) over this row's
    projected_paper_seconds: float = 0.0
    agreement: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.forward_per_sample = self.forward_passes / self.samples
        self.images_per_s = self.forward_passes / self.seconds
        self.seconds_per_sample = self.seconds / self.samples


def exact_passes(m: Margins, max_steps: int) -> Tensor:
    """Forward passes the exact linear scan makes per sample, from its result:
    one at the sample itself (is it classified correctly?), then the flipped
    step of each flipped search and max_steps for each N/A search (a
    misclassified sample is not searched: its margins are 0)."""
    steps = torch.where(m.adjacent != NA, torch.round(m.margin / m.step).long(), max_steps)
    return steps.sum(1) + 1


def compare(a: Margins, b: Margins, step: float) -> dict[str, float | int]:
    """How far b is from the reference a, over all searches of the samples both hold."""
    n = min(a.n_samples, b.n_samples)
    am, aa, bm, ba = a.margin[:n], a.adjacent[:n], b.margin[:n], b.adjacent[:n]
    same_class = aa == ba
    err = (am - bm).abs()
    within_step = err <= step * (1 + 1e-5)
    both = (aa != NA) & (ba != NA)
    return {
        "searches": int(am.numel()),
        "adjacent_agreement": float(same_class.float().mean()),
        "agreement_within_step": float((same_class & within_step).float().mean()),  # same class, margin within one step
        "margin_exact_share": float((err == 0).float().mean()),
        "margin_abs_err_mean": float(err.mean()),
        "margin_abs_err_max": float(err.max()),
        "margin_abs_err_mean_flipped": float(err[both].mean()) if both.any() else 0.0,  # over searches flipped in both
        "missed_flips": int(((aa != NA) & (ba == NA)).sum()),  # flipped in the reference, N/A here
        "extra_flips": int(((aa == NA) & (ba != NA)).sum()),
        "other_class": int((both & ~same_class).sum()),  # flipped in both, to different classes
        "margin_mismatches": int((am != bm).sum()),
        "adjacent_mismatches": int((~same_class).sum()),
    }


def timed(fn: Callable[[], Margins], device: torch.device, repeats: int = 1) -> tuple[Margins, float]:
    """(the result, the best wall seconds of `repeats` synchronised calls)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    assert result is not None
    return result, best


def single_image_rate(model: nn.Module, x: Tensor, device: torch.device, seconds: float) -> float:
    """Forward passes/s of the model alone on one image per call (inference_mode, fp32, NCHW)."""
    one = x[:1]
    with torch.inference_mode():
        for _ in range(20):
            model(one).argmax(1)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while n < 50 or time.perf_counter() - t0 < seconds:
            int(model(one).argmax(1))  # the naive loop reads every prediction back
            n += 1
        return n / (time.perf_counter() - t0)


def load_data(args: argparse.Namespace) -> DataSplits:
    cfg = DataConfig(dataset="mnist", root=args.data_root, n_train=args.n_train, split_seed=args.seed)
    try:
        return load_splits(cfg)
    except DataNotFoundError:
        raise SystemExit(f"boundary_search: MNIST not found under root {str(resolve_root(cfg))!r} "
                         f"(expected MNIST/raw/*-ubyte; pass --data-root or set ${DATA_ROOT_ENV})") from None


def build_model(args: argparse.Namespace, splits: DataSplits, device: torch.device) -> tuple[nn.Module, str, float]:
    """(the model to search, where its weights come from, seconds spent training)."""
    if args.weights:
        torch.manual_seed(args.seed)
        net = create_model(ARCH)
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"] if "model" in state else state)
        return net.to(device).eval(), f"loaded from {args.weights}", 0.0
    cfg = ExperimentConfig(data=DataConfig(dataset="mnist", root=args.data_root, n_train=args.n_train, split_seed=args.seed),
                           model=ModelConfig(arch=ARCH),
                           train=TrainConfig(epochs=args.epochs, n_iterations=0, seed=args.seed, device=str(device)))
    t0 = time.perf_counter()
    net = fit(cfg, splits).model.eval()
    return net, f"trained here: {args.epochs} epoch(s) on {len(splits.train)} images, seed {args.seed}", time.perf_counter() - t0


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="S: correctly classified training samples searched by the batched scans")
    parser.add_argument("--directions", type=int, default=128, help="D: random orthogonal directions (each in both signs)")
    parser.add_argument("--naive-samples", type=int, help="run the naive loop on exactly this many samples "
                        "(default: one at a time until --seconds have passed, at least one)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time budget of the naive loop")
    parser.add_argument("--step", type=float, default=0.02, help="search step, [0, 1] pixel units (paper: 0.02)")
    parser.add_argument("--max-margin", type=float, default=0.5, help="search range, [0, 1] pixel units (paper: 0.5)")
    parser.add_argument("--coarse-factor", type=int, default=SearchConfig.coarse_factor, help="coarse_to_fine: fine steps per coarse step")
    parser.add_argument("--batch-size", type=int, default=None, help="points per forward call of the batched scans "
                        "(default: SearchConfig's, 512 on a CPU, 16384 on a GPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=SearchConfig.channels_last,
                        help="memory layout of the batched scans")
    parser.add_argument("--c2f-bf16", action=argparse.BooleanOptionalAction, default=True, help="also coarse-to-fine under bf16")
    add_force_bf16(parser)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each batched scan (the best counts)")
    parser.add_argument("--reference-seconds", type=float, default=3.0, help="timing window of the single-image forward reference")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the model (ignored with --weights)")
    parser.add_argument("--n-train", type=int, help="training images (default: the whole local training split)")
    parser.add_argument("--weights", help="a state dict or cnnf.train checkpoint of cnn_mnist_small instead of training")
    parser.add_argument("--data-root", default=default_data_root(), help=f"MNIST root (torchvision layout; default ${DATA_ROOT_ENV} "
                        "or the shared offline datasets)")
    parser.add_argument("--seed", type=int, default=0, help="training, samples and directions")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    for name in ("samples", "directions", "repeats", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1")
    if args.naive_samples is not None and not 1 <= args.naive_samples <= args.samples:
        parser.error(f"--naive-samples: must be in 1..--samples ({args.samples})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    base = SearchConfig(n_samples=args.samples, n_directions=args.directions, step=args.step, max_margin=args.max_margin,
                        coarse_factor=args.coarse_factor, channels_last=args.channels_last, batch_size=args.batch_size,
                        seed=args.seed, device=str(device))
    step, max_steps = base.step, base.max_steps

    load_before, cpu_before = os.getloadavg()[0], cpu_snapshot()
    if device.type == "cpu":
        tune_cpu_allocator()  # as fit() and evaluate() do
    host = print_host(device)
    skipped: dict[str, str] = {}
    reason = bf16_skip(device, args.force_bf16, "bf16 rows (exact bf16, c2f bf16) and their targets")
    if reason:
        skipped["bf16"] = reason

    # The model and the samples.
    splits = load_data(args)
    print(f"training the model ({ARCH})..." if not args.weights else f"loading {args.weights}...", flush=True)
    net, origin, train_seconds = build_model(args, splits, device)
    model = InferenceModel(net, 0, "first").eval()
    with torch.inference_mode():
        test_acc = accuracy(model, splits.test.to(device))
    print(f"model: {ARCH}, {origin}; test accuracy {100 * test_acc:.2f} % on {len(splits.test)} MNIST test images"
          + (f" (trained in {train_seconds:.1f} s)" if train_seconds else ""))
    try:
        rows_idx = draw_samples(model, splits.train, args.samples, splits.n_classes, args.seed)
    except ValueError as exc:
        raise SystemExit(f"boundary_search: --samples {args.samples}: {exc}") from None
    x, y = splits.train.x[rows_idx].to(device), splits.train.y[rows_idx].to(device)
    dim = x[0].numel()
    if args.directions > dim:
        parser.error(f"--directions: at most {dim} orthogonal directions exist")
    dirs = orthogonal_directions(args.directions, dim, args.seed).to(device)
    S, D = args.samples, args.directions
    print(f"search: {S} samples x {D} directions x 2 signs = {S * 2 * D} searches, step {step}, range {base.max_margin} "
          f"({max_steps} steps), batch {base.batch_for(device.type)}, channels_last {base.channels_last}, device {device}")

    # Reference: the model's own single-image forward rate.
    single_rate = single_image_rate(model, x, device, args.reference_seconds)
    print(f"reference: the model alone, one image per forward call: {single_rate:.0f} forward passes/s", flush=True)

    # (a) The naive loop, sample by sample.
    naive_scan(model, x[:1], y[:1], dirs[:1], step, max_steps, clip=base.clip)  # warm-up
    n_target = args.naive_samples
    print(f"measuring the naive loop ({'%d samples' % n_target if n_target else '~%g s' % args.seconds})...", flush=True)
    parts: list[Margins] = []
    naive_seconds = 0.0
    while len(parts) < (n_target or S):
        i = len(parts)
        m, sec = timed(lambda: naive_scan(model, x[i : i + 1], y[i : i + 1], dirs, step, max_steps, clip=base.clip), device)
        parts.append(m)
        naive_seconds += sec
        if n_target is None and naive_seconds >= args.seconds:
            break
    n_naive = len(parts)
    naive = Margins(torch.cat([p.margin for p in parts]), torch.cat([p.adjacent for p in parts]), y[:n_naive].cpu(),
                    torch.arange(n_naive), step, base.max_margin, "naive", sum(p.forward_passes for p in parts), naive_seconds)
    rows: list[Row] = [Row("naive", "exact", "fp32", n_naive, naive.forward_passes, naive_seconds)]
    print(f"  naive: {n_naive} samples, {naive.forward_passes} forward passes in {naive_seconds:.1f} s "
          f"({rows[0].images_per_s:.0f}/s)", flush=True)

    # (b)-(d) The batched scans on all S samples.
    configs = [("exact fp32", "exact", "fp32"), ("exact bf16", "exact", "bf16"), ("c2f fp32", "coarse_to_fine", "fp32")]
    if args.c2f_bf16:
        configs.append(("c2f bf16", "coarse_to_fine", "bf16"))
    if skipped:
        configs = [c for c in configs if c[2] != "bf16"]
    results: dict[str, Margins] = {}
    for what, mode, precision in configs:
        cfg = SearchConfig(**{**asdict(base), "mode": mode, "precision": precision})
        scan(model, x[:1], y[:1], dirs[: min(D, 64)], cfg)  # warm-up
        print(f"measuring the batched scan, {what}...", flush=True)
        m, sec = timed(lambda: scan(model, x, y, dirs, cfg), device, args.repeats)
        results[what] = m
        rows.append(Row(what, mode, precision, S, m.forward_passes, sec))
        print(f"  {what}: {m.forward_passes} forward passes in {sec:.1f} s ({rows[-1].images_per_s:.0f}/s)", flush=True)
    load_after = os.getloadavg()[0]

    exact = results["exact fp32"]
    # The naive loop does exactly the exact scan's forward passes: its cost on the S samples.
    exact_per_sample = exact_passes(exact, max_steps)
    naive_passes_match = int(exact_per_sample[:n_naive].sum()) == naive.forward_passes
    exact_count_match = int(exact_per_sample.sum()) == exact.forward_passes
    naive_rate = rows[0].images_per_s
    naive_sps = exact.forward_passes / S / naive_rate  # seconds per sample of the naive loop on the S samples
    searches_paper = PAPER_SAMPLES * PAPER_DIRECTIONS * 2
    for r in rows:
        passes_per_search = (exact.forward_passes / (S * 2 * D)) if r.what == "naive" else r.forward_passes / (S * 2 * D)
        r.projected_paper_seconds = searches_paper * passes_per_search / r.images_per_s
        r.speedup = naive_sps / r.seconds_per_sample if r.what != "naive" else 1.0

    vs_naive = compare(naive, exact, step)
    identical = torch.equal(exact.margin[:n_naive], naive.margin) and torch.equal(exact.adjacent[:n_naive], naive.adjacent)
    rows[0].agreement = {}
    rows[1].agreement = vs_naive
    for r in rows[2:]:
        r.agreement = compare(exact, results[r.what], step)

    # The table.
    na_share = float((exact.adjacent == NA).float().mean())
    print(f"\n{'':11} {'samples':>7} {'fwd/sample':>10} {'img/s':>8} {'s/sample':>9} {'x naive':>8} {'agree':>7} "
          f"{'adj.agree':>9} {'|dm| mean':>9} {'|dm| max':>8} {'dm=0':>6} {'paper scale':>11}")
    for r in rows:
        a = r.agreement
        agree = f"{100 * a['agreement_within_step']:6.2f}%" if a else ""
        adj = f"{100 * a['adjacent_agreement']:8.2f}%" if a else ""
        err = (f"{a['margin_abs_err_mean']:9.4f} {a['margin_abs_err_max']:8.2f} {100 * a['margin_exact_share']:5.1f}%" if a
               else f"{'':9} {'':8} {'':6}")
        print(f"{r.what:11} {r.samples:7d} {r.forward_per_sample:10.0f} {r.images_per_s:8.0f} {r.seconds_per_sample:9.3f} "
              f"{r.speedup:8.2f} {agree:>7} {adj:>9} {err} {fmt_seconds(r.projected_paper_seconds):>11}")
    print(f"{'naive*':11} {S:7d} {exact.forward_passes / S:10.0f} {naive_rate:8.0f} {naive_sps:9.3f} {1.0:8.2f} "
          f"{'':7} {'':9} {'':9} {'':8} {'':6} {fmt_seconds(rows[0].projected_paper_seconds):>11}")
    print(f"\nnaive: measured on the first {n_naive} of the {S} samples; naive* = its cost on all {S} "
          f"(the exact scan's forward passes at the naive rate), the base of 'x naive' (wall time per sample).")
    print("exact modes do the naive loop's forward passes, so their 'x naive' is their images/s over the naive loop's; "
          "coarse-to-fine does fewer forward passes.")
    print(f"agree: same adjacent class and margin within one step ({step}) of exact fp32 (exact fp32: of the naive loop); "
          "adj.agree: same adjacent class (N/A included); dm: margin difference in pixel units; dm=0: share of identical margins.")
    for r in rows[2:]:
        a = r.agreement
        print(f"{r.what} vs exact fp32: {a['adjacent_mismatches']} of {a['searches']} searches end in another class "
              f"({a['missed_flips']} N/A here but flipped in exact fp32, {a['extra_flips']} the reverse, {a['other_class']} "
              f"flipped to a different class); {a['margin_mismatches']} margins differ")
    print(f"paper scale: {PAPER_SAMPLES} samples x {PAPER_DIRECTIONS} directions x 2 signs = {searches_paper:,} searches at this run's "
          f"forward passes per search ({exact.forward_passes / (S * 2 * D):.1f} exact; upper bound {max_steps}: "
          f"{searches_paper * max_steps / 1e6:.0f}M forward passes) and each row's rate.")
    print(f"the model alone, one image per call: {single_rate:.0f}/s; the naive loop reaches {100 * naive_rate / single_rate:.0f} % "
          f"of it (the rest is its per-step point construction); a zero-overhead per-image loop would be {single_rate / naive_rate:.2f}x "
          "the naive loop.")
    others = other_cpu_share(cpu_before, cpu_snapshot())
    print(f"load average: {load_before:.2f} before, {load_after:.2f} after; other processes used "
          f"{'?' if others is None else f'{100 * others:.0f} %'} of the CPUs while this ran (a shared machine: other load lowers every rate)")
    busy = others is not None and others > BUSY_SHARE
    if busy:
        print(f"WARNING: other processes used more than {100 * BUSY_SHARE:.0f} % of the CPUs during this benchmark: the rates, and "
              "even the ratios (measured minutes apart), are not reliable; run it again on a quiet machine")

    # Adjacent classes.
    counts = torch.bincount(exact.adjacent.flatten() + 1, minlength=splits.n_classes + 1).double()
    shares = {("N/A" if c == 0 else str(c - 1)): float(counts[c] / counts.sum()) for c in range(splits.n_classes + 1)}
    print(f"\nN/A searches (no flip within range, exact fp32): {100 * na_share:.1f} % (paper: ~79 % on MNIST)")
    print("adjacent-class shares: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in shares.items()))

    # Exactness and the targets.
    print()
    if identical:
        print(f"exact fp32 == naive loop: margins and adjacent classes bitwise identical on the {n_naive} samples "
              f"({vs_naive['searches']} searches) both ran")
    else:
        print(f"MISMATCH exact fp32 != naive loop on {n_naive} samples: {vs_naive['margin_mismatches']} margins and "
              f"{vs_naive['adjacent_mismatches']} adjacent classes differ of {vs_naive['searches']} searches")
    if not (naive_passes_match and exact_count_match):
        print(f"NOTE forward-pass counts: naive loop {naive.forward_passes} vs the exact scan's on the same samples "
              f"{int(exact_per_sample[:n_naive].sum())}; exact scan counted {exact.forward_passes} vs "
              f"{int(exact_per_sample.sum())} from its margins")
    targets = []
    by = {r.what: r for r in rows}
    for what, need in TARGETS.items():
        if what not in by:
            continue
        r = by[what]
        checks = [r.speedup >= need]
        text = f"{r.speedup:.2f}x naive (target >= {need:g}x)"
        if what == "exact fp32" and device.type == "cpu":
            checks.append(identical)
            text += ", bitwise identical to the naive loop" if identical else ", NOT identical to the naive loop"
        elif what == "exact fp32":
            share = vs_naive["agreement_within_step"]
            checks.append(share >= AGREEMENT_TARGET)
            text += (f", agreement with the naive loop {100 * share:.2f} % (target on a GPU >= {100 * AGREEMENT_TARGET:g} %; "
                     f"{'bitwise identical' if identical else 'not bitwise identical'})")
        elif what == "exact bf16":
            share = r.agreement["agreement_within_step"]
            checks.append(share >= AGREEMENT_TARGET)
            text += f", agreement {100 * share:.2f} % (target >= {100 * AGREEMENT_TARGET:g} %)"
        else:
            share = r.agreement["adjacent_agreement"]
            checks.append(share >= AGREEMENT_TARGET)
            text += f", adjacent-class agreement {100 * share:.2f} % (target >= {100 * AGREEMENT_TARGET:g} %)"
        ok = all(checks)
        targets.append({"what": what, "speedup": r.speedup, "speedup_target": need, "passed": ok, "text": text})
        print(f"{'PASS' if ok else 'FAIL'} {what}: {text}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({
                "host": host, "skipped": skipped,
                "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "load_average": {"before": load_before, "after": load_after}, "other_cpu_share": others, "busy": busy,
                "model": {"arch": ARCH, "origin": origin, "weights": args.weights, "test_accuracy": test_acc,
                          "test_images": len(splits.test), "train_seconds": train_seconds},
                "settings": {"samples": S, "directions": D, "naive_samples": n_naive, "seconds": args.seconds,
                             "step": step, "max_margin": base.max_margin, "max_steps": max_steps,
                             "coarse_factor": base.coarse_factor, "batch_size": base.batch_for(device.type),
                             "channels_last": base.channels_last, "repeats": args.repeats, "seed": args.seed},
                "single_image_forward_per_s": single_rate,
                "rows": [asdict(r) for r in rows],
                "naive_on_all_samples": {"forward_passes": exact.forward_passes, "seconds_per_sample": naive_sps,
                                         "images_per_s": naive_rate, "projected_paper_seconds": rows[0].projected_paper_seconds},
                "exact_identical_to_naive": identical,
                "naive_mismatches": {"margin": vs_naive["margin_mismatches"], "adjacent": vs_naive["adjacent_mismatches"]},
                "naive_forward_passes_match_exact": naive_passes_match,
                "exact_forward_passes_match_margins": exact_count_match,
                "na_share": na_share, "adjacent_shares": shares,
                "paper_scale": {"samples": PAPER_SAMPLES, "directions": PAPER_DIRECTIONS, "searches": searches_paper,
                                "seconds": {r.what: r.projected_paper_seconds for r in rows}},
                "targets": targets,
            }, fh, indent=2)
    if not identical and device.type == "cpu":
        sys.exit(1)


if __name__ == "__main__":
    main()
