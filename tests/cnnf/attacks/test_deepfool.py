"""DeepFool: batched equals per image, exact on a linear model, fooled examples stop, the budget."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnf.attacks import DeepFoolAttack
from tests.cnnf.attacks.conftest import correct


def test_batched_matches_one_image_at_a_time(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch[0][:12], batch[1][:12]
    attack = DeepFoolAttack(None, steps=20)
    together = attack.perturb(tiny_net, x, y)
    alone = torch.cat([attack.perturb(tiny_net, x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-4)
    assert not correct(tiny_net, together, y).any()


def test_one_step_reaches_the_nearest_boundary_of_a_linear_model() -> None:
    """For logits W x + b DeepFool's first step is the exact minimal L2
    perturbation, min_k |f_k - f_y| / ||w_k - w_y||, plus 1e-4, times
    (1 + overshoot); mid-range inputs and small weights keep it unclipped."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.rand(6, 1, 4, 4) * 0.2 - 0.1
    with torch.no_grad():
        y = linear(x).argmax(1)
    w, b = linear[1].weight, linear[1].bias
    f = x.flatten(1) @ w.T + b
    dw = w[None, :, :] - w[y][:, None, :]  # (N, K, d)
    dist = (f - f.gather(1, y[:, None])).abs() / dw.norm(dim=2)
    dist = dist.scatter(1, y[:, None], float("inf")).min(1).values
    x_adv = DeepFoolAttack(None, steps=1, overshoot=0.02, n_candidates=5).perturb(linear, x, y)
    torch.testing.assert_close((x_adv - x).flatten(1).norm(dim=1), 1.02 * (dist + 1e-4), rtol=1e-4, atol=1e-6)
    assert not correct(linear, x_adv, y).any()


def test_fooled_examples_stay_and_the_budget_returns_x(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Misclassified examples are returned as they are; with a budget the
    result is the unbounded one where its L2 norm is within eps, else x."""
    x, y = batch
    wrong = ~correct(tiny_net, x, y)
    unbounded = DeepFoolAttack(None, steps=20).perturb(tiny_net, x, y)
    assert wrong.any() and torch.equal(unbounded[wrong], x[wrong])
    found = (unbounded - x).flatten(1).norm(dim=1)
    bounded = DeepFoolAttack(0.5, steps=20).perturb(tiny_net, x, y)  # 1.0 in input units
    inside = found <= 1.0
    assert 0 < inside.sum() < len(x)
    assert torch.equal(bounded, torch.where(inside[:, None, None, None], unbounded, x))


def test_candidates_are_the_top_classes_by_clean_logit() -> None:
    """Class 1 is the runner-up by logit but its boundary is far (distance 1);
    class 2's is near (0.1). Two candidates see only class 1, three find 2."""
    linear = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        linear[1].weight.copy_(torch.tensor([[0.0, 0, 0, 0], [0.01, 0, 0, 0], [0, 1, 0, 0]]))
        linear[1].bias.copy_(torch.tensor([0.0, -0.01, -0.1]))
    x, y = torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)
    near = DeepFoolAttack(None, steps=1, n_candidates=3).perturb(linear, x, y).flatten()
    torch.testing.assert_close(near, torch.tensor([0, 1.02 * (0.1 + 1e-4), 0, 0]))
    runner_up = DeepFoolAttack(None, steps=1, n_candidates=2).perturb(linear, x, y).flatten()
    assert runner_up[0] > 0.5 and (runner_up[1:] == 0).all()
