"""Robustness evaluation of a trained CNN-F; returns values, never prints.

Clean accuracy of the scored prediction, and Linf PGD (random start) whose
gradient is taken either from the first forward pass ("first": the attack
of the paper's Tables 2-5, scored with the full CNN-F) or end to end through
the whole unrolled CNN-F on the same prediction that is scored ("e2e"; the
reference attacks `last` while scoring `avg`). An example counts as robust
only if it is classified correctly both clean and under attack.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from cnnf.attacks import LinfPGDAttack
from cnnf.config import EvalConfig
from cnnf.data import ArrayDataset
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.runtime import tune_cpu_allocator

Progress = Callable[[int, int], None]  # (examples done, examples total)


@dataclass(frozen=True)
class EvalReport:
    """Accuracies in [0, 1]; eps_linf in [0, 1] pixel units."""

    split: str
    n_examples: int
    n_iterations: int
    prediction: str
    eps_linf: float
    pgd_steps: int
    clean_acc: float
    pgd_first_acc: float
    pgd_e2e_acc: float
    seconds: float

    def metrics(self, prefix: str = "") -> dict[str, float]:
        keys = ("clean_acc", "pgd_first_acc", "pgd_e2e_acc")
        return {f"{prefix}{k}": getattr(self, k) for k in keys}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(
    net: FeedbackNet,
    data: ArrayDataset,
    cfg: EvalConfig,
    n_iterations: int,
    *,
    split: str = "val",
    progress: Optional[Progress] = None,
) -> EvalReport:
    """Clean and PGD accuracy of `net` on the first cfg.n_examples of `data`."""
    t0 = time.perf_counter()
    device = next(net.parameters()).device
    if device.type == "cpu":
        tune_cpu_allocator()
    data = data.head(cfg.n_examples).to(device)
    net.eval()
    scored = InferenceModel(net, n_iterations, cfg.prediction)
    first = InferenceModel(net, 0, "first")
    pgd = LinfPGDAttack(cfg.eps_linf, cfg.pgd_steps, cfg.pgd_step_linf, cfg.pgd_random_start, cfg.seed)
    # One random-start stream per attack target, seeded alike: the two attacks
    # start from the same points, and every batch gets fresh ones.
    g_first = torch.Generator(device=device).manual_seed(cfg.seed)
    g_e2e = torch.Generator(device=device).manual_seed(cfg.seed)
    counts = torch.zeros(3, device=device)  # clean, pgd first, pgd e2e
    total = len(data)
    for i in range(0, total, cfg.batch_size):
        x, y = data.x[i : i + cfg.batch_size], data.y[i : i + cfg.batch_size]
        with torch.no_grad():
            clean_ok = scored(x).argmax(1) == y
        x_first = pgd.perturb(first, x, y, g_first)
        x_e2e = x_first if cfg.prediction == "first" else pgd.perturb(scored, x, y, g_e2e)
        with torch.no_grad():
            first_ok = clean_ok & (scored(x_first).argmax(1) == y)
            e2e_ok = clean_ok & (scored(x_e2e).argmax(1) == y)
        counts += torch.stack([clean_ok.sum(), first_ok.sum(), e2e_ok.sum()]).float()
        if progress is not None:
            progress(min(i + cfg.batch_size, total), total)
    clean, first_acc, e2e = (counts / max(total, 1)).tolist()
    return EvalReport(split, total, scored.n_iterations, cfg.prediction, cfg.eps_linf, cfg.pgd_steps,
                      clean, first_acc, e2e, time.perf_counter() - t0)
