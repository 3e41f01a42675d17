"""The loop shared by the gradient-ascent attacks (FGSM, PGD Linf/L2, BIM, MIM).

x_{t+1} = project(x_t + alpha * direction(memory_t)), where memory_t
accumulates the gradients of the summed cross-entropy w.r.t. x_t (summed,
so one example's step does not depend on the batch size). Subclasses choose
the start, the direction and the accumulation; the budget's norm chooses the
projection (`Attack.project`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf.attacks.base import Attack, FirstSuccess, Predict
from cnnf.data import to_input_units


class GradientAttack(Attack):
    """`steps` projected gradient-ascent steps of size step_pixels, optional
    random start, `restarts` runs, first-success tracking.

    With track_success (default) each example gets the first iterate
    predict misclassifies, over all restarts (an example counts as broken
    if any restart breaks it; later restarts only attack the examples still
    unbroken); without it, with one restart, the final iterate. Every
    restart draws a fresh random start from the generator.
    """

    def __init__(self, eps_pixels: float, steps: int, step_pixels: float, random_start: bool, seed: int = 0,
                 restarts: int = 1, track_success: bool = True):
        super().__init__(eps_pixels, seed)
        if steps < 0 or restarts < 1:
            raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
        self.steps = steps
        self.step_pixels = step_pixels
        self.alpha = to_input_units(step_pixels)
        self.random_start = random_start
        self.stochastic = random_start
        self.restarts = restarts
        self.track_success = track_success

    def random_point(self, x: Tensor, generator: torch.Generator) -> Tensor:  # pragma: no cover
        """A random start inside the budget around x (only with random_start)."""
        raise NotImplementedError

    def accumulate(self, grad: Tensor, memory: Tensor | None) -> Tensor:
        """What the step direction is computed from; plain gradient by default."""
        return grad

    def direction(self, memory: Tensor) -> Tensor:
        """Steepest ascent direction of unit norm from the accumulated gradient;
        the sign for Linf attacks."""
        return memory.sign()

    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Adversarial x for labels y. Pass one `generator` for all batches of an
        evaluation so each batch gets fresh random starts."""
        x = x.detach()
        generator = self.generator_for(x, generator)
        if self.restarts == 1 and not self.track_success:
            return self._run(predict, x, y, generator, None, None)
        best = FirstSuccess(x, y)
        for _ in range(self.restarts):
            rows = best.open_rows()
            if len(rows) == 0:
                break
            final = self._run(predict, x[rows], y[rows], generator, best if self.track_success else None, rows)
            open_ = ~best.fooled[rows]  # the examples this restart has not fooled yet: only their final iterate is new
            with torch.no_grad():
                best.update(final[open_], predict(final[open_]), rows[open_])
        return best.x_adv

    @torch.enable_grad()
    def _run(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator,
             best: FirstSuccess | None, rows: Tensor | None) -> Tensor:
        """One restart on the examples `rows`; returns its final iterate. With
        `best`, every iterate before the last is offered to it, and an example
        leaves the run once it is fooled: later steps compute only the examples
        still open (their trajectories do not depend on the others, the loss
        being a sum over examples), and the run ends when none is."""
        x_adv = self.project(self.random_point(x, generator), x) if self.random_start else x.clone()
        memory: Tensor | None = None
        active = torch.arange(len(x), device=x.device)  # indices into x of the examples still attacked
        for _ in range(self.steps):
            xa = x_adv[active].requires_grad_(True)
            logits = predict(xa)
            keep = slice(None)
            if best is not None and rows is not None:
                best.update(xa, logits, rows[active])
                keep = ~best.fooled[rows[active]]
                if not bool(keep.any()):
                    break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits[keep], y[active][keep], reduction="sum"), xa)
            active, grad = active[keep], grad[keep]
            step_memory = self.accumulate(grad, None if memory is None else memory[active])
            if memory is None:
                memory = torch.zeros_like(x)
            memory[active] = step_memory
            x_adv[active] = self.project(x_adv[active] + self.alpha * self.direction(step_memory), x[active])
        return x_adv.detach()


class PGDBase(GradientAttack):
    """PGD (Madry et al. 2018): random start, `steps` projected steps of
    step_pixels (default 2.5 * eps / steps), optional restarts. The norm's
    subclass picks the random start and the step direction."""

    def __init__(self, eps_pixels: float, steps: int = 40, step_pixels: float | None = None, random_start: bool = True,
                 seed: int = 0, restarts: int = 1, track_success: bool = True):
        step = step_pixels if step_pixels is not None else 2.5 * eps_pixels / max(steps, 1)
        super().__init__(eps_pixels, steps, step, random_start, seed, restarts, track_success)
