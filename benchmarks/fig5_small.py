#!/usr/bin/env python
"""Paper Fig. 5 at small scale: robustness of standard-trained CNN vs CNN-F-k.

Claim (Huang et al. 2020, Fig. 5; cnnf-spec "Evaluation"): on Fashion-MNIST
with *standard* (non-adversarial) training (Appendix B.1), CNN-Fs are more
robust than the plain CNN of the same backbone under FGSM and PGD-40 across
eps, and for a CNN-F-5 the accuracy on adversarial images rises with the
number of feedback iterations at test time (predictions get corrected).
"CNN-F-k" = a CNN-F trained with k feedback iterations.

What this script does, top to bottom:
  1. train a plain CNN (`cnn_fmnist_std`, T = 0) and CNN-F-k for each k in
     --train-iterations (`cnnf_fmnist_std`, ind 0) with `cnnf.train.fit`
     (Adam lr 1e-3, wd 5e-4, CE + 0.1 pixel reconstruction); no checkpoint
     selection, the last epoch is the model;
  2. on a stratified subset of the TEST split (a reported figure, nothing is
     selected on it): FGSM and PGD-40 accuracy vs eps, attacking the first
     pass ("first", then scored with the full CNN-F) and end to end through
     the scored prediction ("e2e", on a smaller nested subset because it
     costs ~(1 + 2T) passes per step);
  3. for one CNN-F (default CNN-F-5): clean and PGD accuracy vs the number of
     evaluation iterations t = 0..--iter-max, with examples crafted once on
     the first pass and scored after t iterations, and (for the t in
     --iter-e2e-ts) crafted end to end against the t-iteration prediction.

Accuracies follow `cnnf.evaluate`: an example counts as robust only if it is
classified correctly both clean and under attack (by the same prediction).
Epsilons are in [0, 1] pixel units; the attack converts to the [-1, 1] inputs.

Writes <out>/results.json (every number, the config, timings) after every
phase, and <out>/fig5.png at the end; the host (CPU model, avx2 / avx512f /
avx512_bf16 / amx flags, threads) is printed first and stored under "host".
Run `--quick` for a ~2 minute smoke test; see docs/reproductions/fig5.md for the full
command. Everything runs in fp32: nothing to skip on a CPU without native
bf16.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without an install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _host import describe_host, host_line  # noqa: E402

from cnnf.attacks import LinfPGDAttack  # noqa: E402
from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig  # noqa: E402
from cnnf.data import DATA_ROOT_ENV, ArrayDataset, load_splits, resolve_root, stratified_split  # noqa: E402
from cnnf.models import FeedbackNet, InferenceModel  # noqa: E402
from cnnf.train import EpochResult, TrainState, fit  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console()

PAPER_CLAIM = (
    "Huang et al. 2020, Fig. 5 (Fashion-MNIST, standard training): CNN-F-k (trained with k feedback iterations) "
    "is more robust than the plain CNN under FGSM and PGD-40 across eps, and for CNN-F-5 the accuracy on "
    "adversarial images increases over feedback iterations at test time (predictions get corrected)."
)

# Sizes of the full run and of the --quick smoke test. Every entry is a CLI
# flag; a flag given on the command line wins over the preset.
FULL = dict(
    n_train=10_000, epochs=3, val_fraction=0.02, n_test=1000, n_test_e2e=200,
    eps="0,0.02,0.05,0.1,0.15,0.2", iter_max=10, n_iter_e2e=100, iter_e2e_ts="1,2,5",
)
QUICK = dict(
    n_train=1000, epochs=1, val_fraction=0.02, n_test=100, n_test_e2e=30,
    eps="0,0.05,0.1", iter_max=10, n_iter_e2e=20, iter_e2e_ts="1,5",
)


def parse_floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def parse_ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (~2 min on 2 CPU cores)")
    p.add_argument("--out", default=None, help="output dir (default runs/fig5-<timestamp>)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashion-mnist")
    g.add_argument("--data-root", default=None, help=f"torchvision root; default ${DATA_ROOT_ENV}, else ./data")
    g.add_argument("--n-train", type=int, default=None, help=f"seeded stratified training subset (full {FULL['n_train']}, quick {QUICK['n_train']})")
    g.add_argument("--val-fraction", type=float, default=None, help="validation split, monitoring only (never used to select)")
    g = p.add_argument_group("training (B.1 standard training)")
    g.add_argument("--train-iterations", default="1,5", help="k of each CNN-F-k; the plain CNN (k = 0) is always trained")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--recon-coef", type=float, default=0.1)
    g.add_argument("--step-size", type=float, default=0.1, help="eta of the online update")
    g.add_argument("--init", choices=("reference", "torch"), default="reference",
                   help="weight initialisation (model.init): the authors' He-normal convs and zero FC biases, or PyTorch's default")
    g.add_argument("--seed", type=int, default=0, help="training, split and attack seed")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    g = p.add_argument_group("evaluation (test split)")
    g.add_argument("--prediction", choices=("last", "avg"), default="avg", help="scored CNN-F prediction (the reference default is avg)")
    g.add_argument("--eval-iterations", type=int, default=None, help="test-time iterations of every CNN-F (default: its training k)")
    g.add_argument("--eps", default=None, help="comma-separated eps in [0, 1] pixel units")
    g.add_argument("--pgd-steps", type=int, default=40)
    g.add_argument("--pgd-step", default="paper",
                   help="PGD step in [0, 1] pixel units: 'paper' = 0.01 at every eps (Appendix B.1: 0.02 in [-1, 1]), "
                        "'scaled' = 2.5 eps / steps (the sweep's eval default), or a number")
    g.add_argument("--n-test", type=int, default=None, help="stratified test subset for clean / first-pass attacks")
    g.add_argument("--n-test-e2e", type=int, default=None, help="nested subset for end-to-end attacks on the CNN-Fs")
    g.add_argument("--eval-batch-size", type=int, default=128, help="attack/scoring batch; on CPU very large batches slow the deep unrolls")
    g = p.add_argument_group("accuracy vs evaluation iterations")
    g.add_argument("--iter-model", type=int, default=None, help="k of the CNN-F-k to study (default: the largest k)")
    g.add_argument("--iter-max", type=int, default=None)
    g.add_argument("--iter-eps", type=float, default=0.1)
    g.add_argument("--iter-e2e-ts", default=None, help="t at which to also craft end to end (empty string: none)")
    g.add_argument("--n-iter-e2e", type=int, default=None, help="nested subset for the per-t end-to-end attacks")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.pgd_step not in ("paper", "scaled"):
        try:
            if float(args.pgd_step) <= 0:
                raise ValueError
        except ValueError:
            p.error(f"--pgd-step must be 'paper', 'scaled' or a positive number, got {args.pgd_step!r}")
    args.eps_list = parse_floats(args.eps)
    args.train_k = sorted(set(parse_ints(args.train_iterations)))
    args.iter_e2e_list = parse_ints(args.iter_e2e_ts)
    if args.iter_model is None:
        args.iter_model = max(args.train_k) if args.train_k else None
    if args.iter_model is not None and args.iter_model not in args.train_k:
        p.error(f"--iter-model {args.iter_model} is not one of --train-iterations {args.train_k}")
    if any(k <= 0 for k in args.train_k):
        p.error("--train-iterations must be positive (the plain CNN is always trained)")
    if any(not 0.0 <= e <= 1.0 for e in args.eps_list + [args.iter_eps]):
        p.error("eps must be in [0, 1] pixel units")
    if any(t < 0 or t > args.iter_max for t in args.iter_e2e_list):
        p.error(f"--iter-e2e-ts must lie in 0..--iter-max ({args.iter_max})")
    args.n_test_e2e = min(args.n_test_e2e, args.n_test)
    args.n_iter_e2e = min(args.n_iter_e2e, args.n_test)
    return args


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """One curve of the figure: a trained model and how it is scored."""

    name: str  # "CNN" or "CNN-F-k"
    arch: str
    train_iterations: int
    eval_iterations: int
    prediction: str  # "first" for the plain CNN

    @property
    def feedback(self) -> bool:
        return self.train_iterations > 0


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    specs = [ModelSpec("CNN", "cnn_fmnist_std", 0, 0, "first")]
    for k in args.train_k:
        t_eval = k if args.eval_iterations is None else args.eval_iterations
        specs.append(ModelSpec(f"CNN-F-{k}", "cnnf_fmnist_std", k, t_eval, args.prediction))
    return specs


def experiment_config(args: argparse.Namespace, spec: ModelSpec) -> ExperimentConfig:
    data = DataConfig(dataset=args.dataset, root=args.data_root, val_fraction=args.val_fraction, split_seed=args.seed, n_train=args.n_train)
    model = ModelConfig(arch=spec.arch, ind=0, step_size=args.step_size, init=args.init)
    train = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        n_iterations=spec.train_iterations, clean_coef=1.0, recon_coef=args.recon_coef, seed=args.seed, device=args.device,
    )
    # EvalConfig here only drives fit()'s per-epoch validation accuracy (monitoring).
    evaluation = EvalConfig(n_iterations=spec.eval_iterations, prediction=spec.prediction if spec.feedback else "avg",
                            batch_size=args.eval_batch_size, seed=args.seed)
    return ExperimentConfig(data=data, model=model, train=train, eval=evaluation)


# --------------------------------------------------------------------------- evaluation helpers


def stratified_subset(data: ArrayDataset, n: int, seed: int) -> tuple[ArrayDataset, Tensor]:
    """A seeded class-balanced subset (indices sorted) of `data`; all of it if n >= len."""
    if n >= len(data):
        idx = torch.arange(len(data))
    else:
        _, idx = stratified_split(data.y.cpu(), n, seed)
    idx = idx.to(data.y.device)
    return ArrayDataset(data.x[idx], data.y[idx]), idx


@torch.no_grad()
def all_logits(net: FeedbackNet, x: Tensor, n_iterations: int, batch_size: int) -> Tensor:
    """logits_0..logits_T of the CNN-F on x: (T + 1, N, K)."""
    chunks = [torch.stack(net.iterate(x[i : i + batch_size], n_iterations).logits) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks, dim=1)


def prediction_at(logits: Tensor, t: int, mode: str) -> Tensor:
    """The (N, K) prediction after t iterations from the stacked (T + 1, N, K) logits."""
    if mode == "first":
        return logits[0]
    if mode == "last":
        return logits[t]
    if mode == "avg":
        return logits[: t + 1].mean(0)
    raise ValueError(mode)


PAPER_PGD_STEP = 0.01  # Appendix B.1: 0.02 in [-1, 1] units at every eps


def pgd_step(choice: str, eps: float, pgd_steps: int) -> float:
    """The PGD step in [0, 1] pixel units for --pgd-step."""
    if choice == "paper":
        return PAPER_PGD_STEP
    if choice == "scaled":
        return 2.5 * eps / pgd_steps
    return float(choice)


def make_attack(kind: str, eps: float, args: argparse.Namespace) -> LinfPGDAttack:
    if kind == "fgsm":  # one signed-gradient step of size eps from the clean image
        return LinfPGDAttack(eps, 1, eps, random_start=False, seed=args.seed)
    return LinfPGDAttack(eps, args.pgd_steps, pgd_step(args.pgd_step, eps, args.pgd_steps), random_start=True, seed=args.seed)


def craft(attack: LinfPGDAttack, predict: Callable[[Tensor], Tensor], data: ArrayDataset, batch_size: int,
          seed: int, advance: Callable[[int], None]) -> Tensor:
    """Adversarial images for all of `data`; one seeded random-start stream per call."""
    g = torch.Generator(device=data.x.device).manual_seed(seed)
    out = []
    for i in range(0, len(data), batch_size):
        out.append(attack.perturb(predict, data.x[i : i + batch_size], data.y[i : i + batch_size], g))
        advance(len(out[-1]))
    return torch.cat(out)


def acc(ok: Tensor) -> float:
    return ok.float().mean().item() if len(ok) else float("nan")


# --------------------------------------------------------------------------- the benchmark


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out or f"runs/fig5-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {
            "paper_claim": PAPER_CLAIM,
            "host": describe_host(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"),
            "config": {k: v for k, v in vars(args).items()},
            "environment": {
                "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            },
            "conventions": {
                "eps_units": "[0, 1] pixel units (inputs are in [-1, 1]; the attack doubles eps)",
                "robust": "correct both clean and under attack, by the same prediction (as cnnf.evaluate)",
                "first": "attack the gradient of the first forward pass, score with the model's prediction",
                "e2e": "attack end to end through the scored prediction (for the plain CNN, first = e2e)",
                "fgsm": "1 step of size eps, no random start",
                "pgd": ("pgd_steps steps of 0.01 pixel units (0.02 in [-1, 1], Appendix B.1) at every eps, random start"
                        if args.pgd_step == "paper" else f"pgd_steps steps, step {args.pgd_step} (see --pgd-step), random start"),
                "test_subsets": "seeded stratified subsets of the test split; the e2e subsets are nested in the n_test subset",
            },
            "models": {},
            "sweep": [],
            "iterations": None,
            "timings_s": {},
        }
        self.models: dict[str, tuple[ModelSpec, FeedbackNet]] = {}
        self.first_cache: dict[tuple[str, str, float], Tensor] = {}  # (model, attack, eps) -> first-pass adversarials
        self.t_start = time.perf_counter()

    def save(self) -> None:
        self.results["timings_s"].pop("total", None)  # keep it last
        self.results["timings_s"]["total"] = time.perf_counter() - self.t_start
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))

    def timed(self, key: str, seconds: float) -> None:
        self.results["timings_s"][key] = seconds
        console.log(f"[bold]{key}[/]: {seconds:.1f} s")

    # ---- 1. training
    def train_all(self) -> None:
        a = self.args
        data_cfg = DataConfig(dataset=a.dataset, root=a.data_root, val_fraction=a.val_fraction, split_seed=a.seed, n_train=a.n_train)
        t0 = time.perf_counter()
        self.splits = load_splits(data_cfg)
        self.results["data"] = {
            "dataset": a.dataset, "root": str(resolve_root(data_cfg)), "n_train": len(self.splits.train),
            "n_val": len(self.splits.val), "n_test_total": len(self.splits.test),
        }
        self.timed("load_data", time.perf_counter() - t0)
        for spec in model_specs(a):
            cfg = experiment_config(a, spec)
            console.rule(f"train {spec.name} ({spec.arch}, T_train={spec.train_iterations})")

            def on_epoch(r: EpochResult, _: TrainState, name: str = spec.name) -> None:
                console.log(f"{name} epoch {r.epoch}/{a.epochs}: loss {r.train_loss:.4f} (ce {r.train_ce:.4f}, recon "
                            f"{r.train_recon:.4f}) train acc {r.train_acc:.4f} val acc {r.val_acc:.4f} "
                            f"[{r.seconds:.1f} s, {r.images_per_s:.0f} img/s]")

            t0 = time.perf_counter()
            result = fit(cfg, self.splits, callback=on_epoch)
            seconds = time.perf_counter() - t0
            self.device = result.device
            self.models[spec.name] = (spec, result.model)
            self.results["models"][spec.name] = {
                **dataclasses.asdict(spec), "experiment_config": dataclasses.asdict(cfg),
                "history": [dataclasses.asdict(r) for r in result.history], "train_seconds": seconds,
                "n_parameters": sum(p.numel() for p in result.model.parameters()),
            }
            self.timed(f"train/{spec.name}", seconds)
            self.save()

    # ---- 2. accuracy vs eps
    def sweep(self) -> None:
        a = self.args
        test = self.splits.test.to(self.device)
        self.test_n, _ = stratified_subset(test, a.n_test, a.seed)
        self.test_e2e, self.e2e_idx = stratified_subset(self.test_n, a.n_test_e2e, a.seed + 1)
        eps_attacked = [e for e in a.eps_list if e > 0]
        with self.progress() as progress:
            for name, (spec, net) in self.models.items():
                net.eval()
                t0 = time.perf_counter()
                scored = InferenceModel(net, spec.eval_iterations, spec.prediction)
                first = InferenceModel(net, 0, "first")
                clean_logits = all_logits(net, self.test_n.x, spec.eval_iterations, a.eval_batch_size)
                clean_ok = prediction_at(clean_logits, spec.eval_iterations, spec.prediction).argmax(1) == self.test_n.y
                clean_ok_head = clean_logits[0].argmax(1) == self.test_n.y
                self.record(name, "clean", 0.0, "first", clean_ok, clean_ok_head, 0.0)
                if spec.feedback:
                    self.record(name, "clean", 0.0, "e2e", clean_ok[self.e2e_idx], None, 0.0)
                for kind in ("fgsm", "pgd"):
                    for eps in eps_attacked:
                        attack = make_attack(kind, eps, a)
                        label = f"{name} {kind} eps={eps:g}"
                        t1 = time.perf_counter()
                        task = progress.add_task(f"{label} first", total=len(self.test_n))
                        x_adv = craft(attack, first, self.test_n, a.eval_batch_size, a.seed, lambda n, t=task: progress.advance(t, n))
                        progress.remove_task(task)
                        self.first_cache[(name, kind, eps)] = x_adv
                        logits = all_logits(net, x_adv, spec.eval_iterations, a.eval_batch_size)
                        ok = clean_ok & (prediction_at(logits, spec.eval_iterations, spec.prediction).argmax(1) == self.test_n.y)
                        ok_head = clean_ok_head & (logits[0].argmax(1) == self.test_n.y)
                        self.record(name, kind, eps, "first", ok, ok_head, time.perf_counter() - t1)
                        if not spec.feedback:
                            continue
                        t1 = time.perf_counter()
                        task = progress.add_task(f"{label} e2e", total=len(self.test_e2e))
                        x_adv = craft(attack, scored, self.test_e2e, a.eval_batch_size, a.seed, lambda n, t=task: progress.advance(t, n))
                        progress.remove_task(task)
                        logits = all_logits(net, x_adv, spec.eval_iterations, a.eval_batch_size)
                        ok = clean_ok[self.e2e_idx] & (prediction_at(logits, spec.eval_iterations, spec.prediction).argmax(1) == self.test_e2e.y)
                        self.record(name, kind, eps, "e2e", ok, None, time.perf_counter() - t1)
                        self.save()
                self.timed(f"sweep/{name}", time.perf_counter() - t0)
                self.save()

    def record(self, model: str, attack: str, eps: float, target: str, ok: Tensor, ok_head: Optional[Tensor], seconds: float) -> None:
        row: dict[str, Any] = {"model": model, "attack": attack, "eps": eps, "target": target, "n": len(ok), "acc": acc(ok)}
        if target == "first":
            row["acc_on_e2e_subset"] = acc(ok[self.e2e_idx])
            row["n_e2e_subset"] = len(self.e2e_idx)
        if ok_head is not None and self.models[model][0].feedback:
            row["acc_first_pass_head"] = acc(ok_head)  # logits_0 of the same CNN-F on the same images
        row["seconds"] = seconds
        self.results["sweep"].append(row)
        console.log(f"{model:9s} {attack:5s} eps={eps:<5g} {target:5s} n={len(ok):5d} acc {row['acc']:.4f}  [{seconds:.1f} s]")

    # ---- 3. accuracy vs evaluation iterations
    def iterations(self) -> None:
        a = self.args
        if a.iter_model is None:
            return
        name = f"CNN-F-{a.iter_model}"
        spec, net = self.models[name]
        t0 = time.perf_counter()
        T = a.iter_max
        y = self.test_n.y
        clean = all_logits(net, self.test_n.x, T, a.eval_batch_size)
        key = (name, "pgd", a.iter_eps)
        with self.progress() as progress:
            if key in self.first_cache:
                x_adv = self.first_cache[key]
            else:
                task = progress.add_task(f"{name} pgd eps={a.iter_eps:g} first", total=len(self.test_n))
                x_adv = craft(make_attack("pgd", a.iter_eps, a), InferenceModel(net, 0, "first"),
                              self.test_n, a.eval_batch_size, a.seed, lambda n: progress.advance(task, n))
                progress.remove_task(task)
            adv = all_logits(net, x_adv, T, a.eval_batch_size)
            curves: dict[str, list[float]] = {}
            for mode in ("last", "avg"):
                clean_ok = [prediction_at(clean, t, mode).argmax(1) == y for t in range(T + 1)]
                adv_ok = [prediction_at(adv, t, mode).argmax(1) == y for t in range(T + 1)]
                curves[f"clean_{mode}"] = [acc(ok) for ok in clean_ok]
                curves[f"pgd_first_{mode}"] = [acc(c & o) for c, o in zip(clean_ok, adv_ok)]  # robust
                curves[f"pgd_first_{mode}_adv_only"] = [acc(o) for o in adv_ok]  # ignoring the clean prediction
                # wrong at t = 0 (the plain first pass) and right after t iterations
                curves[f"pgd_first_{mode}_corrected"] = [acc(~adv_ok[0] & o) for o in adv_ok]
                curves[f"pgd_first_{mode}_broken"] = [acc(adv_ok[0] & ~o) for o in adv_ok]
            t_first = time.perf_counter() - t0
            e2e_rows = []
            sub, sub_idx = stratified_subset(self.test_n, a.n_iter_e2e, a.seed + 2)
            attack = make_attack("pgd", a.iter_eps, a)
            for t in a.iter_e2e_list:
                t1 = time.perf_counter()
                target = InferenceModel(net, t, a.prediction if t > 0 else "first")
                task = progress.add_task(f"{name} pgd eps={a.iter_eps:g} e2e t={t}", total=len(sub))
                x_e2e = craft(attack, target, sub, a.eval_batch_size, a.seed, lambda n, k=task: progress.advance(k, n))
                progress.remove_task(task)
                logits = all_logits(net, x_e2e, t, a.eval_batch_size)
                clean_ok = prediction_at(clean, t, a.prediction).argmax(1)[sub_idx] == sub.y
                ok = clean_ok & (prediction_at(logits, t, a.prediction).argmax(1) == sub.y)
                row = {"t": t, "n": len(sub), "acc": acc(ok), "clean_acc": acc(clean_ok), "seconds": time.perf_counter() - t1}
                e2e_rows.append(row)
                console.log(f"{name} pgd eps={a.iter_eps:g} e2e t={t:2d} n={len(sub)} acc {row['acc']:.4f}  [{row['seconds']:.1f} s]")
        self.results["iterations"] = {
            "model": name, "eps": a.iter_eps, "attack": f"pgd{a.pgd_steps}", "n": len(self.test_n), "t": list(range(T + 1)),
            "first_crafted": curves, "first_crafted_seconds": t_first,
            "e2e": {"prediction": a.prediction, "n": len(sub), "rows": e2e_rows},
        }
        self.timed("iterations", time.perf_counter() - t0)
        self.save()

    @staticmethod
    def progress() -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)

    # ---- reporting
    def tables(self) -> None:
        a = self.args
        eps = sorted({0.0, *a.eps_list})
        for kind, title in (("fgsm", "FGSM"), ("pgd", f"PGD-{a.pgd_steps}")):
            tab = Table(title=f"{title}: robust accuracy (%) vs eps on the test split")
            tab.add_column("model / target")
            tab.add_column("n", justify="right")
            for e in eps:
                tab.add_column(f"{e:g}", justify="right")
            for name, (spec, _) in self.models.items():
                for target in (("first", "e2e") if spec.feedback else ("first",)):
                    rows = self.rows(name, kind, target)
                    n = rows[-1]["n"] if rows else 0
                    label = name if not spec.feedback else f"{name} {target}"
                    tab.add_row(label, str(n), *[self.fmt(rows, e) for e in eps])
                if spec.feedback:  # the first-pass numbers on the e2e subset, for a like-for-like comparison
                    rows = self.rows(name, kind, "first")
                    tab.add_row(f"{name} first (e2e subset)", str(len(self.e2e_idx)),
                                *[self.fmt(rows, e, "acc_on_e2e_subset") for e in eps])
            console.print(tab)
        it = self.results.get("iterations")
        if it:
            tab = Table(title=f"{it['model']}: accuracy (%) vs evaluation iterations t, PGD-{a.pgd_steps} eps={it['eps']:g}")
            cols = {"clean_last": "clean last", "clean_avg": "clean avg", "pgd_first_last": "PGD-first last",
                    "pgd_first_avg": "PGD-first avg", "pgd_first_last_corrected": "fixed by t (last)"}
            tab.add_column("t", justify="right")
            for header in cols.values():
                tab.add_column(header, justify="right")
            tab.add_column(f"PGD-e2e {it['e2e']['prediction']} n={it['e2e']['n']}", justify="right")
            e2e = {r["t"]: r["acc"] for r in it["e2e"]["rows"]}
            for t in it["t"]:
                tab.add_row(str(t), *[f"{100 * it['first_crafted'][c][t]:.1f}" for c in cols],
                            f"{100 * e2e[t]:.1f}" if t in e2e else "")
            console.print(tab)

    def rows(self, model: str, kind: str, target: str) -> list[dict]:
        return [r for r in self.results["sweep"] if r["model"] == model and r["target"] == target and r["attack"] in (kind, "clean")]

    @staticmethod
    def fmt(rows: list[dict], eps: float, key: str = "acc") -> str:
        for r in rows:
            if r["eps"] == eps and key in r:
                return f"{100 * r[key]:.1f}"
        return ""

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a = self.args
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, (kind, title) in zip(axes[:2], (("fgsm", "FGSM"), ("pgd", f"PGD-{a.pgd_steps}"))):
            for i, (name, (spec, _)) in enumerate(self.models.items()):
                color = "black" if not spec.feedback else colors[i % len(colors)]
                for target, style in (("first", "-"), ("e2e", "--")):
                    rows = sorted(self.rows(name, kind, target), key=lambda r: r["eps"])
                    if not rows or (target == "e2e" and not spec.feedback):
                        continue
                    label = name if not spec.feedback else f"{name} ({target}, n={rows[-1]['n']})"
                    ax.plot([r["eps"] for r in rows], [100 * r["acc"] for r in rows], style, marker="o", ms=3, color=color, label=label)
            ax.set(title=f"{title} (standard training)", xlabel="eps (pixel units, [0, 1])", ylabel="robust accuracy (%)", ylim=(0, 100))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[2]
        it = self.results.get("iterations")
        if it:
            t = it["t"]
            fc = it["first_crafted"]
            ax.plot(t, [100 * v for v in fc["clean_last"]], "-", color="gray", label="clean, last")
            ax.plot(t, [100 * v for v in fc["clean_avg"]], ":", color="gray", label="clean, avg")
            ax.plot(t, [100 * v for v in fc["pgd_first_last"]], "-", marker="o", ms=3, color=colors[0], label="PGD first-pass crafted, last")
            ax.plot(t, [100 * v for v in fc["pgd_first_avg"]], ":", marker="o", ms=3, color=colors[0], label="PGD first-pass crafted, avg")
            rows = it["e2e"]["rows"]
            if rows:
                ax.plot([r["t"] for r in rows], [100 * r["acc"] for r in rows], "s--", color=colors[1],
                        label=f"PGD e2e at t, {it['e2e']['prediction']} (n={it['e2e']['n']})")
            ax.set(title=f"{it['model']}: PGD-{a.pgd_steps} eps={it['eps']:g} vs iterations", xlabel="evaluation iterations t",
                   ylabel="accuracy (%)", ylim=(0, 100))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"Fashion-MNIST, n_train={self.results['data']['n_train']}, {a.epochs} epochs, test n={a.n_test} "
                     f"(e2e n={a.n_test_e2e}); CNN-F prediction={a.prediction}", fontsize=9)
        fig.tight_layout()
        fig.savefig(self.out / "fig5.png", dpi=130)
        plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = Runner(args)
    print(host_line(runner.results["host"]), flush=True)
    console.rule("Fig. 5 (small): config")
    console.print({k: v for k, v in vars(args).items() if k not in ("eps_list", "train_k", "iter_e2e_list")})
    console.log(f"output: {runner.out}  torch {torch.__version__}, {torch.get_num_threads()} threads")
    runner.train_all()
    console.rule("accuracy vs eps (test split)")
    runner.sweep()
    console.rule("accuracy vs evaluation iterations (test split)")
    runner.iterations()
    t0 = time.perf_counter()
    runner.plot()
    runner.timed("plot", time.perf_counter() - t0)
    runner.save()
    console.rule("results")
    runner.tables()
    tab = Table(title="time per phase (s)")
    tab.add_column("phase")
    tab.add_column("seconds", justify="right")
    for k, v in runner.results["timings_s"].items():
        tab.add_row(k, f"{v:.1f}")
    console.print(tab)
    console.log(f"wrote {runner.out / 'results.json'} and {runner.out / 'fig5.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
