"""Momentum iterative method (Dong et al. 2018), Linf."""

from __future__ import annotations

from torch import Tensor

from cnnf.attacks.base import ATTACKS, per_example
from cnnf.attacks.iterative import GradientAttack


@ATTACKS.register("mim")
class MIMAttack(GradientAttack):
    """BIM with momentum: g_{t+1} = decay * g_t + grad_t / ||grad_t||_1 (per
    example), x_{t+1} = project(x_t + step * sign(g_{t+1})); from x itself.

    eps_pixels, step_pixels: [0, 1] pixel units; the step defaults to
    eps / steps. decay: the momentum factor mu (1.0 in the paper).
    track_success: see `GradientAttack`.
    """

    def __init__(self, eps_pixels: float, steps: int = 10, step_pixels: float | None = None, decay: float = 1.0,
                 seed: int = 0, track_success: bool = True):
        step = step_pixels if step_pixels is not None else eps_pixels / max(steps, 1)
        super().__init__(eps_pixels, steps, step, random_start=False, seed=seed, track_success=track_success)
        self.decay = decay

    def accumulate(self, grad: Tensor, memory: Tensor | None) -> Tensor:
        normalised = grad / per_example(grad.flatten(1).abs().sum(1).clamp_min(1e-12), grad)
        return normalised if memory is None else self.decay * memory + normalised
