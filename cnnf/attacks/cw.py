"""Carlini-Wagner L2 attack (Carlini & Wagner 2017), boundary-safe."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS, Adam, Attack, Predict, margin, per_example


@ATTACKS.register("cw_l2")
class CWL2Attack(Attack):
    """Minimise ||delta||_2^2 + c * max(margin(x + delta), -kappa) with Adam,
    per example, with a binary search on c (delta in input units).

    margin = logit of y minus the largest other logit. Unlike the paper's
    tanh change of variables, which cannot move a pixel sitting exactly on
    the range's boundary (atanh of +-1 is infinite, the gradient there
    zero), x + delta is optimised directly and clipped to the input range
    after each step: boundary pixels move inwards freely.

    eps_pixels: optional L2 budget in [0, 1] pixel units (None: unbounded,
    the minimal perturbations are reported). c: the initial trade-off.
    binary_search_steps: rounds of `steps` Adam steps, each from delta = 0;
    after a round c becomes the midpoint of the largest failed and the
    smallest successful c, or is multiplied by 10 while none succeeded.
    kappa: the logit margin a success needs. lr: Adam step in model-input
    units (0.01 = 0.005 pixel).
    Returns, per example, the smallest-L2 x + delta with margin < -kappa
    (within eps if given) over all iterates of all rounds, else x unchanged.
    With binary_search_steps=1 or eps None, more steps never break fewer
    examples.
    """

    norm = "l2"

    def __init__(self, eps_pixels: float | None = None, c: float = 1.0, kappa: float = 0.0, steps: int = 100,
                 lr: float = 0.01, binary_search_steps: int = 5, seed: int = 0):
        super().__init__(eps_pixels, seed)
        self.c, self.kappa, self.steps, self.lr = c, kappa, steps, lr
        self.binary_search_steps = binary_search_steps

    @torch.enable_grad()
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.detach()
        n = len(x)
        best = x.clone()
        best_sq = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        limit_sq = float("inf") if self.eps is None else self.eps**2
        const = torch.full((n,), self.c, device=x.device, dtype=x.dtype)
        lower = torch.zeros(n, device=x.device, dtype=x.dtype)
        upper = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        for _ in range(self.binary_search_steps):
            x_adv = x.clone()
            adam = Adam(x_adv, self.lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            for step in range(self.steps + 1):
                x_adv.requires_grad_(True)
                m = margin(predict(x_adv), y)
                sq = (x_adv - x).flatten(1).square().sum(1)
                hit = (m < -self.kappa).detach()
                succeeded |= hit
                better = hit & (sq.detach() < best_sq) & (sq.detach() <= limit_sq)
                best = torch.where(per_example(better, x), x_adv.detach(), best)
                best_sq = torch.where(better, sq.detach(), best_sq)
                if step == self.steps:
                    break
                loss = (sq + const * m.clamp_min(-self.kappa)).sum()
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = torch.clamp(x_adv.detach() - adam.step(grad), self.lo, self.hi)
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10)
        return best
