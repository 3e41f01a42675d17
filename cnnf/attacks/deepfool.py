"""DeepFool, L2 (Moosavi-Dezfooli et al. 2016), batched."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS, Attack, FirstSuccess, Predict, l2_norm, per_example


@ATTACKS.register("deepfool")
class DeepFoolAttack(Attack):
    """Step to the nearest linearised decision boundary until the label flips.

    At x_t, for each candidate class k (the n_candidates - 1 classes with
    the largest clean logits other than y), f_k = z_k - z_y and
    w_k = grad f_k; the closest boundary is l = argmin |f_k| / ||w_k||_2 and
    r_t = (|f_l| / ||w_l|| + 1e-4) * w_l / ||w_l||. Then
    x_{t+1} = clip(x + (1 + overshoot) * sum_t r_t). The whole batch moves
    at once (one backward pass per candidate class); examples already fooled
    stop moving. Each example gets its first fooling iterate, else the last.

    eps_pixels: optional L2 budget in [0, 1] pixel units (None: unbounded);
    where the perturbation found exceeds it, x is returned.
    """

    norm = "l2"

    def __init__(self, eps_pixels: float | None = None, steps: int = 50, overshoot: float = 0.02,
                 n_candidates: int = 10, seed: int = 0):
        super().__init__(eps_pixels, seed)
        if n_candidates < 2:
            raise ValueError(f"n_candidates must be at least 2 (the true class and one other), got {n_candidates}")
        self.steps, self.overshoot, self.n_candidates = steps, overshoot, n_candidates

    @torch.enable_grad()
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.detach()
        best = FirstSuccess(x, y)
        r_total = torch.zeros_like(x)
        x_adv = x.clone()
        rows = torch.arange(len(x), device=x.device)
        others: Tensor | None = None  # (N, n_candidates - 1) candidate classes other than y
        for step in range(self.steps + 1):
            x_rows = x_adv[rows].requires_grad_(True)
            logits = predict(x_rows)
            best.update(x_rows, logits, rows)
            if others is None:
                k = min(self.n_candidates, logits.shape[1]) - 1
                others = logits.detach().scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices
            moving = ~best.fooled[rows]
            if step == self.steps or not moving.any():
                break
            r = self._step(logits, x_rows, y[rows], others[rows])
            rows, r = rows[moving], r[moving]
            r_total[rows] += r
            x_adv[rows] = torch.clamp(x[rows] + (1 + self.overshoot) * r_total[rows], self.lo, self.hi)
        x_adv = best.x_adv
        if self.eps is not None:
            x_adv = torch.where(per_example(l2_norm(x_adv - x) > self.eps, x), x, x_adv)
        return x_adv

    @staticmethod
    def _step(logits: Tensor, x_rows: Tensor, y: Tensor, others: Tensor) -> Tensor:
        """The minimal step r_t of every row to its closest linearised boundary."""
        f = logits.gather(1, others) - logits.gather(1, y[:, None])  # (M, k), < 0 while y wins
        k = f.shape[1]
        w = torch.stack([torch.autograd.grad(f[:, j].sum(), x_rows, retain_graph=j < k - 1)[0] for j in range(k)], 1)
        w_norm = w.flatten(2).norm(dim=2).clamp_min(1e-12)  # (M, k)
        dist = f.detach().abs() / w_norm
        closest = dist.argmin(1)
        pick = torch.arange(len(f), device=f.device)
        w_l, dist_l, norm_l = w[pick, closest], dist[pick, closest], w_norm[pick, closest]
        return per_example((dist_l + 1e-4) / norm_l, w_l) * w_l
