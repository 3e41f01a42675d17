"""Linf PGD with random start (Madry et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS
from cnnf.attacks.iterative import PGDBase


@ATTACKS.register("pgd_linf")
class LinfPGDAttack(PGDBase):
    """`steps` signed-gradient ascent steps on the cross-entropy, projected
    onto the Linf ball and the input range, from a uniform random start in
    the ball.

    eps_pixels, step_pixels: [0, 1] pixel units; the step defaults to
    2.5 * eps / steps. restarts, track_success: see `GradientAttack`; Madry
    training uses track_success=False (the final iterate, as in the paper).
    """

    def random_point(self, x: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (2 * noise - 1) * self.eps
