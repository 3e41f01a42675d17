"""Basic iterative method (Kurakin et al. 2017)."""

from __future__ import annotations

from cnnf.attacks.base import ATTACKS
from cnnf.attacks.iterative import GradientAttack


@ATTACKS.register("bim")
class BIMAttack(GradientAttack):
    """`steps` signed-gradient steps of the cross-entropy from x itself (no
    random start), each projected onto the Linf ball and the input range:
    PGD without the random start.

    eps_pixels, step_pixels: [0, 1] pixel units; the step defaults to
    eps / steps (the total path just reaches the ball's surface).
    track_success: see `GradientAttack`.
    """

    def __init__(self, eps_pixels: float, steps: int = 10, step_pixels: float | None = None, seed: int = 0,
                 track_success: bool = True):
        step = step_pixels if step_pixels is not None else eps_pixels / max(steps, 1)
        super().__init__(eps_pixels, steps, step, random_start=False, seed=seed, track_success=track_success)
