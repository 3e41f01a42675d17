"""Square attack (Andriushchenko et al. 2020): its schedule and update
shapes, and that it finds the adversarial examples a gradient-masking model
hides from PGD."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cnnf.attacks import SquareAttack, create_attack
from cnnf.attacks.square import eta_pattern, square_fraction
from tests.cnnf.attacks.conftest import accuracy


class Quantized(nn.Module):
    """A non-differentiable front end: inputs rounded to 5 grey levels
    (round() has zero gradient), then the model. Gradient attacks see a zero
    input gradient everywhere (Athalye et al. 2018's textbook masking)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round((x + 1) * 2) / 2 - 1)


def test_square_size_halves_on_the_papers_schedule() -> None:
    assert [square_fraction(0.8, i, 10000) for i in (0, 10, 11, 50, 51, 8000, 8001, 9999)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 2**8, 0.8 / 2**9, 0.8 / 2**9]
    # Rescaled with the budget: at 1,000 queries the first halving is after iteration 1 (10 / 10), the last after 800.
    assert square_fraction(0.8, 1, 1000) == 0.8 and square_fraction(0.8, 2, 1000) == 0.4
    assert square_fraction(0.8, 801, 1000) == 0.8 / 2**9


def test_eta_pattern_is_the_papers_centred_pyramid() -> None:
    """eq. (4) for h = 3 (n = 1): centre 1/2^2 + 1/1^2, the ring 1/2^2."""
    expected = torch.full((3, 3), 0.25)
    expected[1, 1] = 1.25
    torch.testing.assert_close(eta_pattern(3, torch.device("cpu"), torch.float32), expected)
    big = eta_pattern(8, torch.device("cpu"), torch.float32)
    assert big.argmax() == 4 * 8 + 4 and big[0, 0] == big.min() == 1 / 25


def test_linf_update_sets_one_square_to_the_ball_corners() -> None:
    """Inside the chosen square every pixel is x +- eps (one sign per channel); outside nothing changes."""
    x = torch.zeros(3, 2, 12, 12)
    attack = SquareAttack(0.1, norm="linf")
    current = attack._start(x, torch.Generator().manual_seed(0))
    assert torch.allclose(current.abs(), torch.full_like(x, attack.eps)), "vertical stripes at +- eps"
    assert (current == current[:, :, :1]).all(), "each column one value: vertical stripes"
    cand = attack._linf_candidate(x, current, 4, torch.Generator().manual_seed(1))
    changed = (cand != current).any(1)  # (N, H, W)
    for i in range(3):
        rows, cols = torch.nonzero(changed[i], as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    assert torch.allclose(cand.abs(), torch.full_like(x, attack.eps))


def test_l2_update_moves_mass_and_keeps_the_budget() -> None:
    """Away from the range's edges the L2 start has length eps and every update
    keeps it exactly: the mass of W1 u W2 and the unused budget go into W1, W2 is zeroed."""
    x = torch.zeros(4, 3, 16, 16)
    attack = SquareAttack(0.1, norm="l2")  # small enough that no pixel reaches the range edge
    g = torch.Generator().manual_seed(0)
    current = attack._start(x, g)
    torch.testing.assert_close(current.flatten(1).norm(dim=1), torch.full((4,), attack.eps))
    for side in (6, 3, 3):
        cand = attack._l2_candidate(x, current, side, g)
        torch.testing.assert_close(cand.flatten(1).norm(dim=1), torch.full((4,), attack.eps))
        assert (cand != current).any()
        current = cand
    half = current * 0.5  # a point inside the ball: the unused budget is spent too
    torch.testing.assert_close(attack._l2_candidate(x, half, 4, g).flatten(1).norm(dim=1), torch.full((4,), attack.eps))


def test_l2_squares_are_at_least_three_pixels_wide() -> None:
    x = torch.zeros(1, 1, 28, 28)
    assert SquareAttack(0.5, queries=1000, norm="l2")._side(x, 999) == 3  # p = 0.8 / 2^9: 1 pixel for Linf
    assert SquareAttack(0.1, queries=1000, norm="linf")._side(x, 999) == 1
    assert SquareAttack(0.1, queries=1000, norm="linf")._side(x, 0) == 25  # sqrt(0.8 * 784)


def test_square_never_differentiates(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch

    def no_autograd(images: Tensor) -> Tensor:
        assert not torch.is_grad_enabled(), "Square must not build a graph"
        return tiny_net(images)

    x_adv = create_attack("square", eps_pixels=0.05, queries=50).perturb(no_autograd, x, y)
    assert accuracy(tiny_net, x_adv, y) < accuracy(tiny_net, x, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_finds_what_a_gradient_masking_front_end_hides_from_pgd(norm: str, tiny_net: nn.Module,
                                                                       batch64: tuple[Tensor, Tensor]) -> None:
    """Rounding the input hides the gradient: PGD (and APGD) leave the quantised
    model's accuracy near clean, while Square, which only queries, breaks far more."""
    masked = Quantized(tiny_net).eval()
    x, y = batch64
    eps = 0.1 if norm == "linf" else 2.0
    clean = accuracy(masked, x, y)
    pgd_name = "pgd_linf" if norm == "linf" else "pgd_l2"
    pgd = accuracy(masked, create_attack(pgd_name, eps_pixels=eps, steps=40).perturb(masked, x, y), y)
    apgd = accuracy(masked, create_attack("apgd_ce", eps_pixels=eps, steps=40, norm=norm).perturb(masked, x, y), y)
    square = accuracy(masked, create_attack("square", eps_pixels=eps, queries=500, norm=norm).perturb(masked, x, y), y)
    assert pgd >= clean - 0.1 and apgd >= clean - 0.1, f"the mask must hide the model from gradients (clean {clean}, PGD {pgd}, APGD {apgd})"
    assert square <= pgd - 0.25, f"Square {square:.3f} vs PGD {pgd:.3f} (clean {clean:.3f})"
