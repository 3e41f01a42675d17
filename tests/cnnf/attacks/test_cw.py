"""Carlini-Wagner L2: boundary pixels move, the smallest adversarial within the budget, x where none."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnf.attacks import CWL2Attack, DeepFoolAttack, L2PGDAttack
from tests.cnnf.attacks.conftest import correct

FAST = dict(steps=30, lr=0.05, binary_search_steps=2)


def norms(x_adv: Tensor, x: Tensor) -> Tensor:
    return (x_adv - x).flatten(1).norm(dim=1)


def test_moves_pixels_that_sit_on_the_range_boundary(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Every pixel of a binarised image is -1 or +1; a tanh parametrisation
    (atanh(+-1) = +-inf) could not move any of them and would fool nothing."""
    x, y = batch
    x = torch.where(x > 0, 1.0, -1.0)
    right = correct(tiny_net, x, y)
    assert right.sum() >= 16
    x_adv = CWL2Attack(None, **FAST).perturb(tiny_net, x, y)
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    fooled = ~correct(tiny_net, x_adv, y)
    assert fooled[right].float().mean() > 0.9, "CW must break binarised images"
    moved = (x_adv != x).flatten(1).sum(1)
    assert (moved[fooled & right] > 0).all()


def test_a_budget_keeps_the_smallest_adversarial_within_it(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """The budget does not change the search, only what is returned: the
    unbounded result where its L2 norm is within eps, else x."""
    x, y = batch
    unbounded = CWL2Attack(None, **FAST).perturb(tiny_net, x, y)
    found = norms(unbounded, x)
    eps_pixels = 0.2  # 0.4 in input units
    bounded = CWL2Attack(eps_pixels, **FAST).perturb(tiny_net, x, y)
    inside = found <= 0.4
    assert 0 < inside.sum() < len(x)
    expected = torch.where(inside[:, None, None, None], unbounded, x)
    assert torch.equal(bounded, expected)


def test_misclassified_examples_and_no_steps_return_x(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    wrong = ~correct(tiny_net, x, y)
    x_adv = CWL2Attack(None, **FAST).perturb(tiny_net, x, y)
    assert wrong.any() and torch.equal(x_adv[wrong], x[wrong]), "x itself is the smallest adversarial there"
    assert torch.equal(CWL2Attack(None, steps=0).perturb(tiny_net, x, y), x)


def test_perturbations_are_near_minimal(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """CW minimises the L2 norm: at every budget e it breaks (within e) at
    least as many examples as 20-step PGD-L2 at e, and its norms are on
    average no larger than DeepFool's (which overshoots the boundary)."""
    x, y = batch
    right = correct(tiny_net, x, y)
    x_adv = CWL2Attack(None, steps=50, lr=0.05, binary_search_steps=4).perturb(tiny_net, x, y)
    found = norms(x_adv, x)
    assert (right & correct(tiny_net, x_adv, y)).sum() == 0
    for eps_pixels in (0.2, 0.5):
        pgd = ~correct(tiny_net, L2PGDAttack(eps_pixels, 20).perturb(tiny_net, x, y), y)
        assert ((found <= 2 * eps_pixels) & right).sum() >= (pgd & right).sum()
    deepfool = norms(DeepFoolAttack(None).perturb(tiny_net, x, y), x)
    assert found[right].mean() <= deepfool[right].mean()
