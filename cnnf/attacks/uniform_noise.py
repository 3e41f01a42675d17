"""Uniform random noise in the Linf ball, many draws per image."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS
from cnnf.attacks.noise import NoiseAttack


@ATTACKS.register("uniform_noise")
class UniformNoiseAttack(NoiseAttack):
    """Noise uniform in [-eps, eps] per pixel. eps_pixels: Linf budget in [0, 1] pixel units."""

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * self.eps
