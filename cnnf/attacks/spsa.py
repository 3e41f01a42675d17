"""SPSA, gradient-free Linf attack (Uesato et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS, Adam, Attack, FirstSuccess, Predict, margin, rows_per_call
from cnnf.data import to_input_units


@ATTACKS.register("spsa")
class SPSAAttack(Attack):
    """Adam descent on the margin loss (logit of y minus the largest other
    logit) with gradients estimated from predict's outputs alone.

    Estimate at x: mean over n_samples Rademacher directions v of
    (L(x + delta v) - L(x - delta v)) / (2 delta) * v (antithetic pairs, so
    2 * n_samples predict rows per example and step, sent in calls of at
    most max_batch rows). After each Adam step (from x, lr per step) the
    iterate is projected onto the Linf ball and the input range; examples
    already fooled stop. Each example gets its first fooling iterate, else
    the last. The probes x +- delta v are not clipped to the range.

    eps_pixels, delta_pixels, lr_pixels: [0, 1] pixel units. The CNN-F
    reference (advertorch) used delta 0.01, lr 0.01 in [-1, 1] units
    (0.005 pixel), 128 samples and only 7 steps; 100 steps is the default
    here. predict is only ever called under torch.no_grad().
    """

    gradient_free = True
    stochastic = True

    def __init__(self, eps_pixels: float, steps: int = 100, delta_pixels: float = 0.005, lr_pixels: float = 0.005,
                 n_samples: int = 128, max_batch: int | None = None, seed: int = 0):
        super().__init__(eps_pixels, seed)
        self.steps, self.n_samples, self.max_batch = steps, n_samples, max_batch
        self.delta_pixels, self.lr_pixels = delta_pixels, lr_pixels
        self.delta, self.lr = to_input_units(delta_pixels), to_input_units(lr_pixels)

    @torch.no_grad()
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.detach()
        generator = self.generator_for(x, generator)
        best = FirstSuccess(x, y)
        x_adv = x.clone()
        adam = Adam(x_adv, self.lr)
        rows = torch.arange(len(x), device=x.device)
        for step in range(self.steps + 1):
            best.update(x_adv[rows], predict(x_adv[rows]), rows)
            rows = rows[~best.fooled[rows]]
            if step == self.steps or len(rows) == 0:
                break
            grad = self.estimate(predict, x_adv[rows], y[rows], generator)
            x_adv[rows] = self.project(x_adv[rows] - adam.step(grad, rows), x[rows])
        return best.x_adv

    def estimate(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """SPSA estimate of the margin's gradient at each row of x."""
        n = self.n_samples
        signs = torch.randint(0, 2, (len(x) * n, *x.shape[1:]), generator=generator,
                              device=x.device, dtype=torch.int8)  # all draws up front: max_batch never changes them
        grad = torch.zeros_like(x).flatten(1)
        for start, stop in self.chunks(len(x), max(1, rows_per_call(self.max_batch, x) // 2)):
            v = signs[start:stop].to(x.dtype) * 2 - 1
            example = torch.arange(start, stop, device=x.device) // n
            probes = torch.cat([x[example] + self.delta * v, x[example] - self.delta * v])
            loss = margin(predict(probes), y[example].repeat(2))
            slope = (loss[: len(v)] - loss[len(v) :]) / (2 * self.delta)
            weighted = slope[:, None] * v.flatten(1)
            # Plain sums, not index_add_: its CUDA kernel adds with atomics in
            # no fixed order, so one seed would give different estimates.
            first = start // n
            if stop - start >= n:  # whole examples
                grad[first : stop // n] += weighted.view(-1, n, weighted.shape[1]).sum(1)
            else:  # part of one example's directions
                grad[first] += weighted.sum(0)
        return (grad / n).view_as(x)

    def chunks(self, n_examples: int, pairs: int) -> list[tuple[int, int]]:
        """Ranges of the n_examples * n_samples directions, at most `pairs`
        per predict call, each either whole examples or within one example."""
        n, total = self.n_samples, n_examples * self.n_samples
        if pairs >= n:
            step = pairs // n * n
            return [(s, min(s + step, total)) for s in range(0, total, step)]
        return [(s, min(s + pairs, (s // n + 1) * n)) for e in range(n_examples) for s in range(e * n, (e + 1) * n, pairs)]
