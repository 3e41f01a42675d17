"""The random-noise baselines' shared loop (many draws per image); the
registered attacks are in uniform_noise.py and gaussian_noise.py."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import Attack, FirstSuccess, Predict, rows_per_call


class NoiseAttack(Attack):
    """`draws` independent noise draws per image, each clipped to the input
    range; an example counts as broken if any draw fools predict (it gets
    the first such draw, else the last one).

    The draws are made one batch-sized tensor at a time in a fixed order
    (so more draws only add draws and results do not depend on max_batch)
    and sent to predict in calls of at most max_batch rows (default: see
    `rows_per_call`); examples already
    fooled are not evaluated again.
    """

    gradient_free = True
    stochastic = True

    def __init__(self, eps_pixels: float, draws: int = 100, max_batch: int | None = None, seed: int = 0):
        super().__init__(eps_pixels, seed)
        self.draws, self.max_batch = draws, max_batch

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:  # pragma: no cover
        """One noise tensor of x's shape, in input units."""
        raise NotImplementedError

    @torch.no_grad()
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.detach()
        generator = self.generator_for(x, generator)
        best = FirstSuccess(x, y)
        per_call = max(1, rows_per_call(self.max_batch, x) // max(1, len(x)))
        for start in range(0, self.draws, per_call):
            noise = torch.stack([self.sample(x, generator) for _ in range(start, min(start + per_call, self.draws))])
            rows = best.open_rows()
            if len(rows) == 0:
                continue  # keep drawing, so the generator ends where it would otherwise
            candidates = self.project(x[rows] + noise[:, rows], x[rows])  # (draws, M, C, H, W)
            logits = predict(candidates.flatten(0, 1)).unflatten(0, candidates.shape[:2])
            for candidate, draw_logits in zip(candidates, logits):
                best.update(candidate, draw_logits, rows)
        return best.x_adv
