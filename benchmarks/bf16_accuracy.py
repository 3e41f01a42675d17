"""Accuracy effect of the bf16 path (issue #3: within 0.5 points on Fashion-MNIST).

Trains the benchmarked setting (B.2 model `cnnf_fmnist_adv`, ind 2, T 1,
PGD-7 adversarial training, SGD poly, clip 0.5, cc 0.1) on a seeded subset of
Fashion-MNIST in fp32 and in bf16 from the same seed, and, for scale, in fp32
from a second seed. Each model is scored on the Fashion-MNIST test split
(avg prediction): clean accuracy on all 10,000 images and PGD-20 (eps 0.1,
first pass) on the first `--n-pgd`; the bf16 model is scored both with bf16
inference and in fp32. Prints the differences in points, and the training
time of each run (on the host printed first: CPU model, avx2 / avx512f /
avx512_bf16 / amx flags, threads; stored under "host" in the JSON). Training
and scoring use the fused CPU kernels (cnnf.fused) as a full-size run does
(`--kernels eager` for the eager ops).

The full benchmark (three trainings of `--epochs` on `--n-train` images):

    .venv/bin/python benchmarks/bf16_accuracy.py --data-root /work/shared/datasets [--json out.json]

bf16 is this script's only purpose, so on a CPU without native bf16
(AVX512-BF16 or AMX), where torch emulates bf16 and the bf16 training alone
would take many times the fp32 one, it does nothing: it prints one line
saying why (on stderr), writes {"host", "skipped": {"bf16": reason}} to
`--json` if given, and exits with status 1 before loading any data. A
non-zero status because the run produced none of the figures it exists for:
a caller that checks the status must not take a skipped run for a measured
one. `--force-bf16` runs it anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cnnf import fused
from cnnf.attacks import LinfPGDAttack
from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.data import ArrayDataset, load_splits
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import add_force_bf16, bf16_skip, print_host  # noqa: E402


def score(net: FeedbackNet, test: ArrayDataset, n_pgd: int, bf16: bool) -> dict[str, float]:
    scored = InferenceModel(net, 1, "avg")
    first = InferenceModel(net, 0, "first")
    pgd = LinfPGDAttack(0.1, 20, 0.025, random_start=True)
    gen = torch.Generator().manual_seed(0)
    clean = robust = 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(test), 500):
            x, y = test.x[i : i + 500], test.y[i : i + 500]
            with torch.no_grad():
                ok = scored(x).argmax(1) == y
            clean += int(ok.sum())
            if i < n_pgd:
                x_adv = pgd.perturb(first, x[: n_pgd - i], y[: n_pgd - i], gen)
                with torch.no_grad():
                    robust += int((ok[: n_pgd - i] & (scored(x_adv).argmax(1) == y[: n_pgd - i])).sum())
    return {"clean_acc": 100 * clean / len(test), "pgd20_acc": 100 * robust / min(n_pgd, len(test))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-pgd", type=int, default=1000)
    parser.add_argument("--kernels", default="fused", choices=["fused", "eager"])
    parser.add_argument("--json", default=None)
    add_force_bf16(parser)
    args = parser.parse_args()
    host = print_host("cpu")
    reason = bf16_skip("cpu", args.force_bf16, "bf16 training and scoring (this script's whole work)", announce=False)
    if reason:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"host": host, "skipped": {"bf16": reason}}, fh, indent=2)
        raise SystemExit(f"bf16_accuracy: nothing measured: {reason}")

    data = DataConfig(dataset="fashion-mnist", root=args.data_root, n_train=args.n_train, val_fraction=0.02)
    splits = load_splits(data)
    runs = [("fp32", 0), ("bf16", 0), ("fp32", 1)]
    results: dict[str, dict[str, float]] = {}
    for precision, seed in runs:
        cfg = ExperimentConfig(
            data=data,
            model=ModelConfig(arch="cnnf_fmnist_adv", ind=2),
            train=TrainConfig(epochs=args.epochs, batch_size=64, optimizer="sgd", lr=0.05, lr_schedule="poly",
                              grad_clip=0.5, adv_eps_linf=0.1, clean_coef=0.1, n_iterations=1,
                              precision=precision, device="cpu", seed=seed, kernels=args.kernels),
            eval=EvalConfig(prediction="avg"),
        )
        t0 = time.perf_counter()
        net = fit(cfg, splits).model
        train_s = time.perf_counter() - t0
        key = f"{precision}-seed{seed}"
        with fused.use_kernels(args.kernels == "fused"):
            results[key] = score(net, splits.test, args.n_pgd, bf16=False) | {"train_s": train_s}
            if precision == "bf16":
                results[key] |= {f"bf16_inference_{k}": v for k, v in score(net, splits.test, args.n_pgd, bf16=True).items()}
        print(key, {k: round(v, 2) for k, v in results[key].items()}, flush=True)

    a, b, c = results["fp32-seed0"], results["bf16-seed0"], results["fp32-seed1"]
    print(f"\n{args.n_train} training images, {args.epochs} epochs, {args.kernels} kernels; accuracies in % on the Fashion-MNIST test split")
    for metric in ("clean_acc", "pgd20_acc"):
        print(f"{metric}: fp32 {a[metric]:.2f}, bf16 {b[metric]:.2f} (bf16 inference {b['bf16_inference_' + metric]:.2f}); "
              f"bf16 - fp32 = {b[metric] - a[metric]:+.2f} points; fp32 seed 1 - seed 0 = {c[metric] - a[metric]:+.2f} points")
    print(f"training time: fp32 {a['train_s']:.0f} s, bf16 {b['train_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"host": host, "skipped": {}, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                       "runs": results}, fh, indent=2)


if __name__ == "__main__":
    main()
