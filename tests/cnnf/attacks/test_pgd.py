"""PGD (Linf and L2): budget and range, seeded random starts, strength on the
CNN-F, the positional signature the training code uses, success tracking
and restarts."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import torch.nn.functional as F
from torch import nn

from cnnf.attacks import L2PGDAttack, LinfPGDAttack, create_attack
from cnnf.data import DataSplits
from cnnf.models import FeedbackNet, InferenceModel
from tests.cnnf.attacks.conftest import correct
from tests.cnnf.conftest import images, make_net

EPS_INPUT = 0.2  # eps_pixels 0.1 on [-1, 1] inputs


def accuracy(predict, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (predict(x).argmax(1) == y).float().mean().item()


def zero_grad_predict(x: Tensor) -> Tensor:
    """Logits with zero input gradient: PGD steps move nothing, leaving the random start."""
    return x.flatten(1)[:, :10] * 0.0


def saturated_images(n: int) -> Tensor:
    """Images that touch both ends of the input range, so clipping to [-1, 1] matters."""
    x = images(n)
    x[:, :, :5] = 1.0
    x[:, :, -5:] = -1.0
    return x


@pytest.mark.parametrize("name", ["cnn_fmnist_std", "cnnf_fmnist_std"])
def test_pgd_stays_in_the_ball_and_the_range(name: str) -> None:
    net = make_net(name, 0)
    predict = InferenceModel(net, 1, "avg")
    x = saturated_images(4)
    x_before = x.clone()
    with torch.no_grad():
        # the model's own labels: an image the untrained net already gets wrong
        # would be left at its random start (a fooled row stops moving)
        y = predict(x).argmax(1)
    x_adv = LinfPGDAttack(0.1, steps=2, seed=0).perturb(predict, x, y)
    assert torch.equal(x, x_before), "the clean batch must not be modified in place"
    delta = (x_adv - x).abs()
    assert delta.max() <= EPS_INPUT + 1e-6
    assert delta.max() >= EPS_INPUT - 1e-6, "the budget is 0.2 in input units, and 2 steps of 0.25 reach it"
    assert x_adv.min() >= -1.0 and x_adv.max() <= 1.0
    assert not x_adv.requires_grad
    assert all(p.grad is None for p in net.parameters()), "the attack must not leave parameter gradients"


def test_attack_units() -> None:
    a = LinfPGDAttack(0.1, steps=4)
    assert a.eps_pixels == 0.1 and a.eps == pytest.approx(EPS_INPUT)
    assert a.alpha == pytest.approx(2 * 2.5 * 0.1 / 4)  # default step 2.5 eps / steps, in input units
    assert LinfPGDAttack(0.1, steps=4, step_pixels=0.01).alpha == pytest.approx(0.02)


def test_random_start_is_seeded_and_uniform_in_the_ball() -> None:
    x, y = images(8, seed=5), torch.zeros(8, dtype=torch.long)
    start = lambda seed: LinfPGDAttack(0.1, steps=1, seed=seed).perturb(zero_grad_predict, x, y)  # noqa: E731
    a, b, c = start(0), start(0), start(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    delta = a - x
    inside = (x.abs() < 1 - EPS_INPUT)  # no clipping to [-1, 1] there
    assert delta.abs().max() <= EPS_INPUT + 1e-6
    assert delta[inside].abs().max() > 0.9 * EPS_INPUT and abs(delta[inside].mean()) < 0.02
    no_start = LinfPGDAttack(0.1, steps=1, random_start=False).perturb(zero_grad_predict, x, y)
    assert torch.equal(no_start, x)


def test_pgd_lowers_accuracy_on_a_trained_model(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    first = InferenceModel(trained_net, 0, "first")
    x, y = sample_splits.test.x[:64], sample_splits.test.y[:64]
    clean = accuracy(first, x, y)
    assert clean > 0.5
    robust = accuracy(first, LinfPGDAttack(0.05, steps=5, seed=0).perturb(first, x, y), y)
    assert robust < clean


def test_more_steps_never_help_the_model(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    """With the step size fixed, whatever 1 step breaks 10 steps break too,
    per example, for first-pass PGD at two budgets."""
    first = InferenceModel(trained_net, 0, "first")
    x, y = sample_splits.test.x[:64], sample_splits.test.y[:64]
    for eps in (0.02, 0.05):
        broken = [~correct(first, LinfPGDAttack(eps, s, eps / 4, seed=0).perturb(first, x, y), y) for s in (1, 10)]
        assert (broken[1] | ~broken[0]).all() and broken[1].sum() > broken[0].sum(), eps


def test_e2e_attack_through_the_unrolled_cnnf(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    """Gradients flow through T=1 feedback iterations and the result is still in budget."""
    scored = InferenceModel(trained_net, 1, "avg")
    x, y = sample_splits.test.x[:16], sample_splits.test.y[:16]
    x_adv = LinfPGDAttack(0.05, steps=2, seed=0).perturb(scored, x, y)
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert not torch.equal(x_adv, x)


def test_create_attack_by_name() -> None:
    attack = create_attack("pgd_linf", eps_pixels=0.1, steps=2)
    assert isinstance(attack, LinfPGDAttack) and attack.steps == 2 and attack.eps == pytest.approx(EPS_INPUT)
    assert isinstance(create_attack("pgd_l2", eps_pixels=0.5), L2PGDAttack)


def test_positional_signature_of_training_and_evaluation() -> None:
    """cnnf.train calls LinfPGDAttack(eps, steps, step, random_start=True), the
    evaluation (eps, steps, step_pixels, random_start, seed): keep that order."""
    a = LinfPGDAttack(0.1, 7, 0.0355, False, 3)
    assert (a.steps, a.alpha, a.random_start, a.seed) == (7, pytest.approx(0.071), False, 3)
    assert (a.restarts, a.track_success) == (1, True)
    b = LinfPGDAttack(0.1)
    assert (b.steps, b.alpha, b.random_start, b.seed, b.stochastic) == (40, pytest.approx(2 * 2.5 * 0.1 / 40), True, 0, True)


def reference_pgd(predict, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, g: torch.Generator) -> Tensor:
    """Madry PGD as cnnf had it before success tracking: the final iterate."""
    x_adv = torch.clamp(x + (2 * torch.rand(x.shape, generator=g) - 1) * eps, x - eps, x + eps).clamp(-1, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(predict(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(-1, 1)
    return x_adv


def test_without_tracking_pgd_returns_the_final_iterate(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """track_success=False (Madry training) is plain PGD: the final iterate,
    from the same random start, whether or not it fools the model."""
    x, y = batch
    ours = LinfPGDAttack(0.05, 6, 0.02, True, 0, track_success=False).perturb(tiny_net, x, y)
    expected = reference_pgd(tiny_net, x, y, 0.1, 0.04, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_tracking_breaks_every_example_the_final_iterate_breaks(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """The final iterate is among the candidates tracking checks (a step as
    large as the budget makes PGD oscillate, so earlier iterates can matter)."""
    x, y = batch
    final, tracked = (
        LinfPGDAttack(0.03, 5, 0.03, True, 0, track_success=t).perturb(tiny_net, x, y) for t in (False, True)
    )
    broken_final, broken_tracked = ~correct(tiny_net, final, y), ~correct(tiny_net, tracked, y)
    assert (broken_tracked | ~broken_final).all()


@pytest.mark.parametrize("cls", [LinfPGDAttack, L2PGDAttack])
def test_restarts_never_break_fewer_examples(cls: type, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    eps = 0.02 if cls is LinfPGDAttack else 0.3
    broken = [~correct(tiny_net, cls(eps, 3, restarts=r, seed=0).perturb(tiny_net, x, y), y) for r in (1, 4)]
    assert (broken[1] | ~broken[0]).all()


def lottery_predict(x: Tensor) -> Tensor:
    """Fooled (class 1 wins) iff the first pixel exceeds 0.16, with a zero
    gradient: only the random start decides, so restarts are what helps."""
    fooled = (x.flatten(1)[:, :1] > 0.16).to(x.dtype)
    return torch.cat([torch.zeros_like(fooled), 2 * fooled - 1], 1) + 0 * x.flatten(1)[:, :2]


@pytest.mark.parametrize("restarts", [3, 10])
def test_restarts_break_more_when_the_start_matters(restarts: int) -> None:
    """A start from U[-0.2, 0.2] fools with chance 0.1: 1 restart breaks ~10 %
    of 64 examples, `restarts` restarts 1 - 0.9**restarts."""
    x, y = torch.zeros(64, 1, 4, 4), torch.zeros(64, dtype=torch.long)
    broken = [~correct(lottery_predict, LinfPGDAttack(0.1, 2, restarts=r).perturb(lottery_predict, x, y), y) for r in (1, restarts)]
    assert (broken[1] | ~broken[0]).all()
    expected = 64 * (1 - 0.9**restarts)
    assert broken[0].sum() < 14 and abs(broken[1].sum().item() - expected) < 4 * (expected * 0.9**restarts) ** 0.5 + 1


def test_each_restart_draws_a_fresh_start() -> None:
    """With a predict that is never fooled and has no gradient, the result is
    the last restart's random start: not the first one's."""
    x, y = images(4), torch.zeros(4, dtype=torch.long)
    one = LinfPGDAttack(0.1, 1, seed=0).perturb(zero_grad_predict, x, y)
    three = LinfPGDAttack(0.1, 1, seed=0, restarts=3).perturb(zero_grad_predict, x, y)
    assert not torch.equal(one, three) and (three - x).abs().max() <= EPS_INPUT + 1e-6


def test_l2_random_start_is_uniform_in_the_ball() -> None:
    """Radius eps * U^(1/d): nearly eps in d = 784 dimensions, never beyond."""
    x = torch.zeros(64, 1, 28, 28)  # mid-range: no clipping
    y = torch.zeros(64, dtype=torch.long)
    start = L2PGDAttack(0.5, 1, seed=0).perturb(zero_grad_predict, x, y)
    radius = (start - x).flatten(1).norm(dim=1)
    assert radius.max() <= 1.0 + 1e-6 and radius.min() > 0.98
    assert abs((start - x).mean()) < 0.01


def test_l2_step_is_the_normalised_gradient(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """One step of 0.1 pixel from x: every example moves by exactly 0.2 input
    units in L2 (mid-range images, so no clipping), along its gradient."""
    x, y = batch[0][:8] * 0.5, batch[1][:8]
    x_adv = L2PGDAttack(1.0, 1, 0.1, random_start=False, track_success=False).perturb(tiny_net, x, y)
    delta = (x_adv - x).flatten(1)
    torch.testing.assert_close(delta.norm(dim=1), torch.full((8,), 0.2))
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(tiny_net(x_req), y, reduction="sum"), x_req)
    cosine = F.cosine_similarity(delta, grad.flatten(1), dim=1)
    torch.testing.assert_close(cosine, torch.ones(8))
