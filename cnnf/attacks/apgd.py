"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks"): APGD-CE, APGD-DLR and
the targeted APGD-T, Linf and L2.

The algorithm, from the paper (Sec. 3):
- step size eta starts at 2 * eps; the first step is a plain projected
  gradient step, every later one has momentum alpha = 0.75:
  z = P(x_k + eta * s(grad_k)), x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})),
  s = sign for Linf, the L2-normalised gradient for L2;
- checkpoints w_j = ceil(p_j * N) with p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06);
- at a checkpoint the step of an example is halved, and it restarts from the
  point of highest loss seen so far, if (1) fewer than rho (w_j - w_{j-1})
  of the steps since the last checkpoint raised the loss (rho = 0.75), or
  (2) its step was not halved at the last checkpoint and its best loss has
  not improved since.
Losses: cross-entropy; DLR = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)
(pi: logits in decreasing order); targeted DLR =
-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). APGD-T attacks, in turn,
the `n_targets` classes with the highest clean logits after the true class
(AutoAttack: 9 targets, 100 iterations, 1 restart each).

Everything per example (step size, counters, best point), so one example's
trajectory does not depend on the others: the batch may be split
(`max_batch`) and fooled examples leave the run without changing anyone
else's numbers. All random starts of a call are drawn up front, so neither
the split nor early stopping changes what is drawn.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf.attacks.base import (ATTACKS, Attack, FirstSuccess, Predict, check_norm_restarts_batch, l2_norm, per_example,
                               predict_in_chunks, rows_per_call)

ALPHA = 0.75  # momentum
RHO = 0.75  # condition 1: share of loss-raising steps between checkpoints


def checkpoints(steps: int) -> list[int]:
    """The iterations w_1 < w_2 < ... <= steps at which the step size may be halved."""
    p_prev, p, out = 0.0, 0.22, []
    while p <= 1.0:
        w = math.ceil(p * steps - 1e-9)  # 0.22 * 100 is 22.000000000000004 in floating point
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio (untargeted), per example; the attack maximises it."""
    ordered = logits.sort(1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).max(1).values
    return -(true - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR, per example; maximising it drives z_target above z_y."""
    ordered = logits.sort(1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)


class APGDAttack(Attack):
    """Auto-PGD with `steps` iterations and `restarts` random restarts, Linf or L2.

    eps_pixels: the budget in [0, 1] pixel units (per pixel for Linf, the
    per-example L2 length for L2). norm: "linf" or "l2". loss: "ce", "dlr"
    or "dlr_targeted" (the registered names fix it). n_targets: target
    classes of the targeted loss (each gets `restarts` runs). random_start:
    x_0 uniform in the budget ball (else x itself). max_batch: rows per
    predict call (default: `rows_per_call`).

    Each example keeps the first iterate predict misclassifies, over all
    restarts and targets (later ones only attack the examples still
    unbroken), else the last iterate of its last run. Costs steps + 1
    gradient evaluations per run and open example; APGD-T one more
    forward (the clean logits that choose the targets).
    """

    loss = "ce"
    stochastic = True

    def __init__(self, eps_pixels: float, steps: int = 100, restarts: int = 1, norm: str = "linf",
                 n_targets: int = 9, random_start: bool = True, max_batch: int | None = None, seed: int = 0):
        super().__init__(eps_pixels, seed)
        check_norm_restarts_batch(norm, restarts, max_batch)
        if steps < 1:
            raise ValueError(f"steps: must be >= 1, got {steps}")
        if n_targets < 1:
            raise ValueError(f"n_targets: must be >= 1, got {n_targets}")
        self.norm = norm
        self.steps, self.restarts, self.n_targets = steps, restarts, n_targets
        self.random_start, self.max_batch = random_start, max_batch
        self.stochastic = random_start

    # -- pieces ---------------------------------------------------------------------
    def runs(self, n_classes: int) -> int:
        """How many runs (restarts x targets) one call makes at most."""
        if self.loss != "dlr_targeted":
            return self.restarts
        return self.restarts * min(self.n_targets, n_classes - 1)

    def random_points(self, x: Tensor, runs: int, generator: torch.Generator) -> Tensor:
        """(runs, N, ...) starts, uniform in the ball around x (Linf: per pixel; L2: Gaussian direction, radius eps U^(1/d))."""
        return torch.stack([self.random_point(x, generator) for _ in range(runs)])  # run by run: more runs extend fewer

    def random_point(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return x + (2 * noise - 1) * self.eps
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * u ** (1.0 / x[0].numel())
        return x + direction * per_example(radius / l2_norm(direction).clamp_min(1e-12), x)

    def direction(self, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return grad.sign()
        return grad / per_example(l2_norm(grad).clamp_min(1e-12), grad)

    def objective(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """Per-example loss the attack maximises."""
        if self.loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        if self.loss == "dlr":
            return dlr_loss(logits, y)
        assert target is not None
        return targeted_dlr_loss(logits, y, target)

    # -- the attack -----------------------------------------------------------------
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.detach()
        generator = self.generator_for(x, generator)
        best = FirstSuccess(x, y)
        if len(x) == 0:
            return best.x_adv
        with torch.no_grad():
            clean = predict_in_chunks(predict, x, self.max_batch)
        k = clean.shape[1]
        needed = {"ce": 2, "dlr": 3, "dlr_targeted": 4}[self.loss]
        if k < needed:
            raise ValueError(f"{type(self).__name__}: the {self.loss} loss needs at least {needed} classes, the model has {k}")
        best.update(x, clean, torch.arange(len(x), device=x.device))
        runs = self.runs(k)
        starts = self.random_points(x, runs, generator) if self.random_start else None
        targets = None
        if self.loss == "dlr_targeted":  # classes by clean logit, the true class left out
            targets = clean.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        for r in range(runs):
            rows = best.open_rows()
            if len(rows) == 0:
                break
            target = None if targets is None else targets[:, r // self.restarts]
            start = x if starts is None else self.project(starts[r], x)
            chunk = rows_per_call(self.max_batch, x)
            for i in range(0, len(rows), chunk):
                part = rows[i:i + chunk]
                final = self._run(predict, x[part], y[part], start[part], None if target is None else target[part], best, part)
                open_ = ~best.fooled[part]
                if bool(open_.any()):  # the last iterate of the examples still open
                    best.x_adv[part[open_]] = final[open_]
        return best.x_adv

    @torch.enable_grad()
    def _loss_grad(self, predict: Predict, x: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        xa = x.detach().requires_grad_(True)
        logits = predict(xa)
        loss = self.objective(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        return logits.detach(), loss.detach(), grad.detach()

    def _run(self, predict: Predict, x: Tensor, y: Tensor, start: Tensor, target: Tensor | None,
             best: FirstSuccess, rows: Tensor) -> Tensor:
        """One run on the examples `rows` (x, y their images and labels); every
        iterate is offered to `best`; returns the final iterates."""
        n = len(x)
        marks = set(checkpoints(self.steps))
        last_mark = 0
        eta = torch.full((n,), 2 * self.eps, device=x.device, dtype=x.dtype)
        x_cur = start.clone()
        logits, loss, grad = self._loss_grad(predict, x_cur, y, target)
        best.update(x_cur, logits, rows)
        x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()
        x_prev = x_cur.clone()
        loss_prev = loss.clone()
        raised = torch.zeros(n, device=x.device)  # steps that raised the loss since the last checkpoint
        halved_last = torch.zeros(n, dtype=torch.bool, device=x.device)  # nothing was halved at w_0 = 0
        best_at_last = loss_best.clone()
        active = torch.arange(n, device=x.device)  # indices into x of the examples still attacked
        for k in range(self.steps):
            a = active
            step = per_example(eta[a], x_cur[a]) * self.direction(grad[a])
            z = self.project(x_cur[a] + step, x[a])
            if k == 0:
                x_new = z
            else:
                x_new = self.project(x_cur[a] + ALPHA * (z - x_cur[a]) + (1 - ALPHA) * (x_cur[a] - x_prev[a]), x[a])
            x_prev[a] = x_cur[a]
            x_cur[a] = x_new
            logits_a, loss_a, grad_a = self._loss_grad(predict, x_new, y[a], None if target is None else target[a])
            best.update(x_new, logits_a, rows[a])
            loss[a], grad[a] = loss_a, grad_a
            raised[a] += (loss_a > loss_prev[a]).float()
            loss_prev[a] = loss_a
            better = loss_a > loss_best[a]
            if bool(better.any()):
                idx = a[better]
                x_best[idx], loss_best[idx], grad_best[idx] = x_new[better], loss_a[better], grad_a[better]
            if k + 1 in marks:
                window = k + 1 - last_mark
                cond1 = raised[a] < RHO * window
                cond2 = ~halved_last[a] & (loss_best[a] <= best_at_last[a])
                halve = cond1 | cond2
                idx = a[halve]
                eta[idx] = eta[idx] / 2
                x_cur[idx], grad[idx], loss_prev[idx] = x_best[idx], grad_best[idx], loss_best[idx]
                halved_last[a] = halve
                best_at_last[a] = loss_best[a]
                raised[a] = 0
                last_mark = k + 1
            keep = ~best.fooled[rows[a]]
            if not bool(keep.all()):
                active = a[keep]
                if len(active) == 0:
                    break
        self.last_step = eta  # per-example step size at the end of the run (input units), for inspection
        return x_cur


@ATTACKS.register("apgd_ce")
class APGDCEAttack(APGDAttack):
    """APGD on the cross-entropy (AutoAttack's first attack). See `APGDAttack`."""

    loss = "ce"


@ATTACKS.register("apgd_dlr")
class APGDDLRAttack(APGDAttack):
    """APGD on the untargeted DLR loss (scale- and shift-invariant in the logits). See `APGDAttack`."""

    loss = "dlr"


@ATTACKS.register("apgd_t")
class APGDTargetedAttack(APGDAttack):
    """APGD-T: targeted DLR against each of the `n_targets` most likely wrong
    classes in turn (AutoAttack's second attack). See `APGDAttack`."""

    loss = "dlr_targeted"
