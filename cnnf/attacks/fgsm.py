"""Fast gradient sign method (Goodfellow et al. 2015)."""

from __future__ import annotations

from cnnf.attacks.base import ATTACKS
from cnnf.attacks.iterative import GradientAttack


@ATTACKS.register("fgsm")
class FGSMAttack(GradientAttack):
    """One step of size eps along the sign of the cross-entropy gradient at
    x, clipped to the input range; no random start, no success tracking.

    eps_pixels: Linf budget in [0, 1] pixel units.
    """

    def __init__(self, eps_pixels: float, seed: int = 0):
        super().__init__(eps_pixels, 1, eps_pixels, random_start=False, seed=seed, track_success=False)
