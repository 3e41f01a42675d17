"""L2 PGD with random start (Madry et al. 2018, L2 ball)."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS, l2_norm, per_example
from cnnf.attacks.iterative import PGDBase


@ATTACKS.register("pgd_l2")
class L2PGDAttack(PGDBase):
    """`steps` ascent steps along the per-example L2-normalised gradient of
    the cross-entropy, projected onto the L2 ball (per example) and the
    input range, from a random start uniform in the ball.

    eps_pixels, step_pixels: L2 lengths in [0, 1] pixel units; the step
    defaults to 2.5 * eps / steps.
    """

    norm = "l2"

    def random_point(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform in the L2 ball: a Gaussian direction, radius eps * U^(1/d)."""
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
        radius = self.eps * u ** (1.0 / x[0].numel())
        return x + direction * per_example(radius / l2_norm(direction).clamp_min(1e-12), x)

    def direction(self, memory: Tensor) -> Tensor:
        return memory / per_example(l2_norm(memory).clamp_min(1e-12), memory)
