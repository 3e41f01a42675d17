"""Attack base class and registry (one registered attack per file).

Budgets are given in [0, 1] pixel units and converted to model-input units
once, here, with `cnnf.data.to_input_units`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from cnnf.data import INPUT_RANGE, to_input_units
from cnnf.registry import Registry

Predict = Callable[[Tensor], Tensor]  # images (N, C, H, W) in INPUT_RANGE -> logits (N, K)


class Attack:
    """Perturbs a batch against a differentiable (or not) prediction function."""

    def __init__(self, eps_pixels: float):
        self.eps_pixels = eps_pixels
        self.eps = to_input_units(eps_pixels)
        self.lo, self.hi = INPUT_RANGE

    def perturb(self, predict: Predict, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Clip into the Linf ball around x and into the valid input range."""
        return torch.clamp(torch.min(torch.max(x_adv, x - self.eps), x + self.eps), self.lo, self.hi)


ATTACKS: Registry[Attack] = Registry("attack")


def create_attack(name: str, **kwargs: object) -> Attack:
    return ATTACKS.create(name, **kwargs)


def attack_names() -> list[str]:
    return ATTACKS.names()
