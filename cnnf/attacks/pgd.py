"""Linf PGD with random start (Madry et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf.attacks.base import ATTACKS, Attack, Predict
from cnnf.data import to_input_units


@ATTACKS.register("pgd_linf")
class LinfPGDAttack(Attack):
    """`steps` signed-gradient ascent steps on the cross-entropy, projected.

    eps_pixels, step_pixels: [0, 1] pixel units; step defaults to
    2.5 * eps / steps. The random start draws from a seeded generator, so a
    run is reproducible.
    """

    def __init__(self, eps_pixels: float, steps: int, step_pixels: float | None = None, random_start: bool = True, seed: int = 0):
        super().__init__(eps_pixels)
        self.steps = steps
        self.alpha = to_input_units(step_pixels if step_pixels is not None else 2.5 * eps_pixels / steps)
        self.random_start = random_start
        self.seed = seed

    @torch.enable_grad()
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Adversarial x for labels y. Pass one `generator` for all batches of an
        evaluation so each batch gets fresh random starts; without it the start
        is drawn from a generator seeded with `seed`."""
        x = x.detach()
        x_adv = x.clone()
        if self.random_start:
            if generator is None:
                generator = torch.Generator(device=x.device).manual_seed(self.seed)
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = self.project(x + (2 * noise - 1) * self.eps, x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(predict(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.project(x_adv.detach() + self.alpha * grad.sign(), x)
        return x_adv.detach()
