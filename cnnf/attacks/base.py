"""Attack base class, registry and the helpers every attack shares.

Units: budgets are given in [0, 1] pixel units (`eps_pixels`) and converted
to model-input units (INPUT_RANGE = [-1, 1]) once, in `Attack.__init__`,
with `cnnf.data.to_input_units`. Every other tensor here (x, perturbations,
steps) is in model-input units.

Contract of `Attack.perturb(predict, x, y, generator=None)`: returns a
detached tensor of x's shape, dtype and device, inside INPUT_RANGE and
inside the budget (`norm` says which); every random draw comes from
`generator`, or from a fresh one seeded with the attack's `seed`; gradients
are taken w.r.t. the input only (no parameter .grad is left behind) and it
works inside torch.no_grad(); predict's train/eval mode is never touched.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor

from cnnf.data import INPUT_RANGE, to_input_units
from cnnf.registry import Registry

Predict = Callable[[Tensor], Tensor]  # images (N, C, H, W) in INPUT_RANGE -> logits (N, K)
Norm = Literal["linf", "l2", "none"]


class Attack:
    """Perturbs a batch against a prediction function, within a budget.

    eps_pixels: the budget in [0, 1] pixel units; None (for attacks that
    allow it) means unbounded. eps is the same budget in input units.
    seed: seeds the generator used when `perturb` gets none; attacks that
    draw nothing (`stochastic` False) ignore it, and accept it so that every
    attack can be built alike by name.
    """

    norm: Norm = "linf"  # what eps bounds: per-pixel, per-example L2, or nothing (noise std)
    gradient_free: ClassVar[bool] = False  # True: never differentiates the attacked predict
    stochastic: bool = False  # True: uses random draws

    def __init__(self, eps_pixels: float | None, seed: int = 0):
        self.eps_pixels = eps_pixels
        self.eps = None if eps_pixels is None else to_input_units(eps_pixels)
        self.seed = seed
        self.lo, self.hi = INPUT_RANGE

    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def generator_for(self, x: Tensor, generator: torch.Generator | None) -> torch.Generator:
        """`generator` itself, or a fresh one on x's device seeded with `seed`."""
        if generator is not None:
            return generator
        return torch.Generator(device=x.device).manual_seed(self.seed)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Clip x_adv into the input range, then project it into the budget around x (per `norm`).

        The budget projection moves the clipped point towards x, and both lie
        in the range, so the result does too (for L2 this keeps the whole
        budget, which clipping after the projection would waste).
        """
        x_adv = torch.clamp(x_adv, self.lo, self.hi)
        if self.eps is None or self.norm == "none":
            return x_adv
        if self.norm == "linf":
            return torch.min(torch.max(x_adv, x - self.eps), x + self.eps)
        delta = x_adv - x
        scale = (self.eps / l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return torch.clamp(x + delta * per_example(scale, x), self.lo, self.hi)  # the clip only absorbs rounding


NORMS = ("linf", "l2")  # the norms of attacks that take a norm= argument (APGD, Square)


def check_norm_restarts_batch(norm: str, restarts: int, max_batch: int | None) -> None:
    """The arguments APGD and Square share: a ValueError naming the bad one."""
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    if restarts < 1:
        raise ValueError(f"restarts: must be >= 1, got {restarts}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch: must be >= 1, got {max_batch}")


def per_example(values: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against `like` (N, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def rows_per_call(max_batch: int | None, x: Tensor) -> int:
    """How many images one predict call may take: `max_batch`, or by default
    256 on the CPU (larger calls run slower per image there: 3,400 img/s at
    256 against 1,000 at 4,096 for the B.2 model, cache-bound) and 8,192 on a GPU."""
    if max_batch is not None:
        return max_batch
    return 8192 if x.is_cuda else 256


def predict_in_chunks(predict: Predict, x: Tensor, max_batch: int | None) -> Tensor:
    """predict(x) in calls of at most `rows_per_call(max_batch, x)` images, concatenated."""
    step = rows_per_call(max_batch, x)
    return torch.cat([predict(x[i:i + step]) for i in range(0, len(x), step)])


def l2_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm: (N, ...) -> (N,)."""
    return t.flatten(1).norm(dim=1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Logit of the true class minus the largest other logit, (N,); < 0 means fooled."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(1).values


class FirstSuccess:
    """Per example, the first candidate `predict` misclassifies, else the latest.

    Iterative attacks feed every iterate (or draw) in order with the logits
    predict gave it; `x_adv` then holds, for each example, the first
    candidate with argmax != y, or the last one seen if none fooled. So with
    the same trajectory, more iterations can only break more examples.
    """

    def __init__(self, x: Tensor, y: Tensor):
        self.x_adv = x.detach().clone()
        self.y = y
        self.fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)

    def update(self, candidate: Tensor, logits: Tensor, rows: Tensor) -> None:
        """Offer candidates for the examples `rows` (indices into the batch)."""
        open_ = ~self.fooled[rows]
        self.x_adv[rows] = torch.where(per_example(open_, candidate), candidate.detach(), self.x_adv[rows])
        self.fooled[rows] = self.fooled[rows] | (logits.detach().argmax(1) != self.y[rows])

    def open_rows(self) -> Tensor:
        """Indices of the examples not fooled yet."""
        return torch.nonzero(~self.fooled).flatten()

    def all_fooled(self, rows: Tensor) -> bool:
        return bool(self.fooled[rows].all())


class Adam:
    """Adam (Kingma & Ba 2015) state for one tensor; `step` returns the
    update to subtract (descent) for the rows given, which must be the same
    rows at every step or a subset of the previous step's rows."""

    def __init__(self, like: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = 0

    def step(self, grad: Tensor, rows: Tensor | slice = slice(None)) -> Tensor:
        (b1, b2), self.t = self.betas, self.t + 1
        self.m[rows] = b1 * self.m[rows] + (1 - b1) * grad
        self.v[rows] = b2 * self.v[rows] + (1 - b2) * grad.square()
        m_hat = self.m[rows] / (1 - b1**self.t)
        v_hat = self.v[rows] / (1 - b2**self.t)
        return self.lr * m_hat / (v_hat.sqrt() + self.eps)


ATTACKS: Registry[Attack] = Registry("attack")


def create_attack(name: str, **kwargs: object) -> Attack:
    return ATTACKS.create(name, **kwargs)


def attack_names() -> list[str]:
    return ATTACKS.names()
