"""Transfer attack: adversarials crafted on a source model, applied to the target."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnf.attacks.base import ATTACKS, Attack, Predict, create_attack


@ATTACKS.register("transfer")
class TransferAttack(Attack):
    """Runs the registered attack `base` (built with eps_pixels and
    base_kwargs) against `source`, e.g. a separately trained plain CNN, and
    returns its result; the target predict given to `perturb` is never
    called. norm, stochastic and seed are the base attack's; it counts as
    gradient-free since it uses no gradient of the target.
    """

    gradient_free = True

    def __init__(self, eps_pixels: float | None, source: Predict, base: str = "pgd_linf", **base_kwargs: object):
        self.base = create_attack(base, eps_pixels=eps_pixels, **base_kwargs)
        super().__init__(eps_pixels, self.base.seed)
        self.source = source
        self.norm = self.base.norm
        self.stochastic = self.base.stochastic

    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.base.perturb(self.source, x, y, generator)
