"""Uniform and Gaussian noise: the noise distributions, first fooling draw, weaker than PGD."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cnnf.attacks import GaussianNoiseAttack, LinfPGDAttack, UniformNoiseAttack
from tests.cnnf.attacks.conftest import accuracy, correct


def never_fooled(x: Tensor) -> Tensor:
    """Class 0 always wins: every attack returns its last draw."""
    return torch.cat([torch.ones(len(x), 1), torch.zeros(len(x), 9)], 1)


def test_noise_distributions_in_input_units() -> None:
    x, y = torch.zeros(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)  # mid-range: no clipping
    uniform = UniformNoiseAttack(0.1, draws=3).perturb(never_fooled, x, y)
    assert uniform.abs().max() <= 0.2 + 1e-6 and uniform.abs().max() > 0.199
    assert uniform.abs().mean() == pytest.approx(0.1, rel=0.02)  # U[-0.2, 0.2]
    gaussian = GaussianNoiseAttack(0.1, draws=3).perturb(never_fooled, x, y)
    assert GaussianNoiseAttack.norm == "none"
    assert gaussian.std() == pytest.approx(0.2, rel=0.02) and gaussian.mean().abs() < 0.005


def test_gaussian_noise_is_clipped_to_the_range() -> None:
    x, y = torch.ones(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    x_adv = GaussianNoiseAttack(0.3, draws=2).perturb(never_fooled, x, y)
    assert x_adv.max() <= 1.0 and x_adv.min() >= -1.0 and (x_adv < 1).any()


@pytest.mark.parametrize("cls", [UniformNoiseAttack, GaussianNoiseAttack])
def test_first_fooling_draw_is_kept_and_max_batch_changes_nothing(cls: type, tiny_net: nn.Module,
                                                                  batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    results = [cls(0.3, draws=20, max_batch=m).perturb(tiny_net, x, y) for m in (32, 200, 10_000)]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    broken = ~correct(tiny_net, results[0], y)
    assert broken.sum() > (~correct(tiny_net, x, y)).sum(), "some draw fools some example"


@pytest.mark.parametrize("cls", [UniformNoiseAttack, GaussianNoiseAttack])
def test_noise_is_weaker_than_pgd(cls: type, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    noise = accuracy(tiny_net, cls(0.05, draws=50).perturb(tiny_net, x, y), y)
    pgd = accuracy(tiny_net, LinfPGDAttack(0.05, 10).perturb(tiny_net, x, y), y)
    assert pgd + 0.2 < noise
