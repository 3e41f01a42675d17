"""SPSA: no gradients at all, a sound gradient estimate, batching, damage on an undefended model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf.attacks import SPSAAttack
from cnnf.attacks.base import margin
from tests.cnnf.attacks.conftest import accuracy


def test_runs_without_autograd_and_lowers_accuracy(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """predict is only called with gradients disabled: a predict that refuses
    otherwise (and could not be differentiated anyway) still loses accuracy."""
    x, y = batch

    def no_autograd(images: Tensor) -> Tensor:
        assert not torch.is_grad_enabled(), "SPSA must not build a graph"
        return tiny_net(images)

    x_adv = SPSAAttack(0.05, steps=20, n_samples=32, lr_pixels=0.01).perturb(no_autograd, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert accuracy(tiny_net, x_adv, y) < accuracy(tiny_net, x, y) - 0.2


def test_estimate_points_along_the_margin_gradient(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """With many samples the estimate aligns with the true gradient of the
    margin (cosine ~ sqrt(n / (n + d)) ~ 0.6 for n = 512, d = 784)."""
    x, y = batch[0][:8], batch[1][:8]
    x_req = x.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(margin(tiny_net(x_req), y).sum(), x_req)
    attack = SPSAAttack(0.05, n_samples=512, delta_pixels=0.001)
    with torch.no_grad():
        estimate = attack.estimate(tiny_net, x, y, torch.Generator().manual_seed(0))
    cosine = F.cosine_similarity(estimate.flatten(1), true.flatten(1), dim=1)
    assert cosine.min() > 0.4, cosine


def test_max_batch_caps_the_calls_but_not_the_result(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:6], batch[1][:6]
    rows: list[int] = []

    def counting(images: Tensor) -> Tensor:
        rows.append(len(images))
        return tiny_net(images)

    small = SPSAAttack(0.05, steps=3, n_samples=16, max_batch=40).perturb(counting, x, y)
    assert max(rows) <= 40 and len(rows) > 3, "the 2 * 16 probes of each example are split over calls"
    large = SPSAAttack(0.05, steps=3, n_samples=16, max_batch=4096).perturb(tiny_net, x, y)
    torch.testing.assert_close(small, large, rtol=0, atol=1e-5)
