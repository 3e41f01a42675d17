"""Gaussian random noise, many draws per image."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS
from cnnf.attacks.noise import NoiseAttack


@ATTACKS.register("gaussian_noise")
class GaussianNoiseAttack(NoiseAttack):
    """Gaussian noise; eps_pixels is its standard deviation in [0, 1] pixel
    units and bounds nothing (norm "none")."""

    norm = "none"

    def sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * self.eps
