"""Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"), Linf and L2; AutoAttack's
fourth attack.

Random search on the margin loss L = z_y - max_{k != y} z_k (logits): each
iteration changes the current point inside one random h x h square (L2: two
squares) and keeps the change if L went down. predict is only called under
torch.no_grad(): the attack never needs a gradient, so it sees through
gradient masking (shattered, vanishing or non-differentiable gradients).

- The square's side: h = round(sqrt(p * H * W)) (at least 1, at most the
  image side), p halving at iterations 10, 50, 200, 500, 1000, 2000, 4000,
  6000, 8000 of a 10,000-query run, those iterations rescaled to the
  `queries` given (iteration i counts as i * 10000 / queries). p_init 0.8 is
  AutoAttack's setting for both norms.
- Linf: the start is vertical stripes, each column and channel at x +- eps
  (random sign); an update sets the square, per channel, to x +- eps with a
  random sign (the paper's x_curr + U({-2 eps, 2 eps}) projected onto the
  ball), clipped to the input range.
- L2 (the paper's Algorithm 3): the start tiles the image with squares of
  side min(H, W) // 5 (at least 1) filled with the centred pattern eta of
  the paper's eq. (4) with a random sign per square and channel, scaled to
  L2 length eps. An update picks two squares W1 and W2; per channel, the
  perturbation mass in W1 u W2 plus an equal share of the unused budget
  (eps^2 - ||nu||^2) is put into W1 along rho * eta / ||eta|| + nu_W1 / ||nu_W1||
  (rho a random sign) and W2 is zeroed; then the result is clipped to the
  input range (which only shortens it). The squares' side is at least 3
  (`L2_MIN_SIDE`, our choice: docs/deviations.md).

Each example keeps its first fooling point (the init or an accepted or
rejected candidate), else its best point; fooled examples stop. Per
iteration every example of the batch gets its draws (positions, signs),
open or not, so early stopping and `max_batch` (rows per predict call) do
not change the numbers. Cost: 1 + queries forward rows per open example
and restart.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cnnf.attacks.base import (ATTACKS, Attack, FirstSuccess, Predict, check_norm_restarts_batch, l2_norm, margin, per_example,
                               predict_in_chunks)

P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10,000-query run
# L2 squares have a side of at least 3: in a 1-pixel square the pattern and the
# old perturbation cancel for one sign in two, and the update loses that mass.
L2_MIN_SIDE = 3


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The fraction p of the image a square covers at `iteration` of a `queries`-iteration run."""
    scaled = int(iteration * 10000 / max(queries, 1))
    return p_init / 2 ** sum(scaled > t for t in P_HALVINGS)


def eta_pattern(h: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The (h, h) centred pattern of eq. (4): eta(r, s) = sum_{k=0}^{M(r,s)} 1 / (n + 1 - k)^2,
    M(r, s) = n - max(|r - n - 1|, |s - n - 1|), n = floor(h / 2), r, s = 1..h."""
    n = h // 2
    idx = torch.arange(1, h + 1, device=device)
    m = n - torch.maximum((idx[:, None] - n - 1).abs(), (idx[None, :] - n - 1).abs())
    weights = 1.0 / (n + 1 - torch.arange(0, n + 1, device=device, dtype=dtype)) ** 2
    cumulative = torch.cumsum(weights, 0)
    return cumulative[m.clamp(min=0)].to(dtype)


@ATTACKS.register("square")
class SquareAttack(Attack):
    """Square attack with `queries` iterations (one forward row each per open
    example, after one for the start) and `restarts` runs.

    eps_pixels: the budget in [0, 1] pixel units (per pixel for Linf, the
    per-example L2 length for L2). norm: "linf" or "l2". p_init: the
    fraction of the image the first squares cover. max_batch: rows per
    predict call (default `rows_per_call`). See the module docstring.
    """

    gradient_free = True
    stochastic = True

    def __init__(self, eps_pixels: float, queries: int = 5000, norm: str = "linf", p_init: float = 0.8,
                 restarts: int = 1, max_batch: int | None = None, seed: int = 0):
        super().__init__(eps_pixels, seed)
        check_norm_restarts_batch(norm, restarts, max_batch)
        if queries < 0:
            raise ValueError(f"queries: must be >= 0, got {queries}")
        if not 0.0 < p_init <= 1.0:
            raise ValueError(f"p_init: must be in (0, 1], got {p_init}")
        self.norm = norm
        self.queries, self.p_init, self.restarts, self.max_batch = queries, p_init, restarts, max_batch

    def _side(self, x: Tensor, iteration: int) -> int:
        _, _, h, w = x.shape
        p = square_fraction(self.p_init, iteration, self.queries)
        least = min(L2_MIN_SIDE, h, w) if self.norm == "l2" else 1
        return max(least, min(round(math.sqrt(p * h * w)), h, w))

    @staticmethod
    def _corner(n: int, side: int, size: int, generator: torch.Generator, like: Tensor) -> Tensor:
        """(n,) random top-left coordinates of a `side` window in `size` pixels."""
        u = torch.rand(n, generator=generator, device=like.device)
        return (u * (size - side + 1)).floor().long().clamp(max=size - side)

    @staticmethod
    def _offsets(x: Tensor, top: Tensor, left: Tensor, side: int) -> tuple[Tensor, Tensor, Tensor]:
        """Window mask (N, 1, H, W) and the row / column offsets inside it."""
        _, _, h, w = x.shape
        rr = torch.arange(h, device=x.device).view(1, h, 1) - top.view(-1, 1, 1)
        cc = torch.arange(w, device=x.device).view(1, 1, w) - left.view(-1, 1, 1)
        inside = (rr >= 0) & (rr < side) & (cc >= 0) & (cc < side)
        return inside[:, None], rr.clamp(0, side - 1)[:, None], cc.clamp(0, side - 1)[:, None]

    def _signs(self, shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
        return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1

    # -- starts -------------------------------------------------------------------
    def _start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            stripes = self._signs((n, c, 1, w), generator, x) * self.eps
            return self.project(x + stripes, x)
        side = max(1, min(h, w) // 5)
        tiles_h, tiles_w = -(-h // side), -(-w // side)
        signs = self._signs((n, c, tiles_h, tiles_w), generator, x)
        pattern = eta_pattern(side, x.device, x.dtype).repeat(tiles_h, tiles_w)[:h, :w]
        delta = signs.repeat_interleave(side, 2).repeat_interleave(side, 3)[:, :, :h, :w] * pattern
        delta = delta * per_example(self.eps / l2_norm(delta).clamp_min(1e-12), delta)
        return self.project(x + delta, x)

    # -- candidates -----------------------------------------------------------------
    def _linf_candidate(self, x: Tensor, current: Tensor, side: int, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        top, left = self._corner(n, side, h, generator, x), self._corner(n, side, w, generator, x)
        signs = self._signs((n, c, 1, 1), generator, x)
        inside, _, _ = self._offsets(x, top, left, side)
        return self.project(torch.where(inside, x + signs * self.eps, current), x)

    def _l2_candidate(self, x: Tensor, current: Tensor, side: int, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        top1, left1 = self._corner(n, side, h, generator, x), self._corner(n, side, w, generator, x)
        top2, left2 = self._corner(n, side, h, generator, x), self._corner(n, side, w, generator, x)
        signs = self._signs((n, c, 1, 1), generator, x)
        nu = current - x
        w1, r1, c1 = self._offsets(x, top1, left1, side)
        w2, _, _ = self._offsets(x, top2, left2, side)
        eta = eta_pattern(side, x.device, x.dtype)
        eta = eta / eta.norm().clamp_min(1e-12)
        pattern = eta[r1, c1] * w1  # (N, 1, H, W): eta* placed at W1

        def channel_norm(t: Tensor) -> Tensor:  # (N, C, 1, 1)
            return t.flatten(2).norm(dim=2)[:, :, None, None]

        unused = (self.eps**2 - l2_norm(nu) ** 2).clamp_min(0.0)  # (N,)
        nu_w1 = nu * w1
        direction = signs * pattern + nu_w1 / channel_norm(nu_w1).clamp_min(1e-12)
        available = (channel_norm(nu * (w1 | w2)) ** 2 + per_example(unused, nu) / c).sqrt()
        placed = direction / channel_norm(direction * w1).clamp_min(1e-12) * available
        new = torch.where(w1, placed, torch.where(w2, torch.zeros_like(nu), nu))
        return self.project(x + new, x)

    # -- the attack -----------------------------------------------------------------
    @torch.no_grad()
    def perturb(self, predict: Predict, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = x.detach()
        generator = self.generator_for(x, generator)
        best = FirstSuccess(x, y)
        if len(x) == 0:
            return best.x_adv
        all_rows = torch.arange(len(x), device=x.device)
        best.update(x, predict_in_chunks(predict, x, self.max_batch), all_rows)
        candidate_of = self._linf_candidate if self.norm == "linf" else self._l2_candidate
        for _ in range(self.restarts):
            if best.all_fooled(all_rows):
                break
            current = self._start(x, generator)  # drawn for every row: the stream does not depend on who is open
            rows = best.open_rows()
            logits = predict_in_chunks(predict, current[rows], self.max_batch)
            best.update(current[rows], logits, rows)
            loss = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
            loss[rows] = margin(logits, y[rows])
            for i in range(self.queries):
                rows = best.open_rows()
                if len(rows) == 0:
                    break
                candidate = candidate_of(x, current, self._side(x, i), generator)
                logits = predict_in_chunks(predict, candidate[rows], self.max_batch)
                best.update(candidate[rows], logits, rows)
                new_loss = margin(logits, y[rows])
                accept = new_loss < loss[rows]
                taken = rows[accept]
                current[taken], loss[taken] = candidate[taken], new_loss[accept]
            open_ = best.open_rows()
            best.x_adv[open_] = current[open_]  # the best point of the examples still robust
        return best.x_adv
