"""cnnf.attacks: Linf PGD budget and range, seeded random start, strength, registry."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cnnf.attacks import LinfPGDAttack, attack_names, create_attack
from cnnf.data import DataSplits
from cnnf.models import FeedbackNet, InferenceModel
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
    y = torch.tensor([0, 1, 2, 3])
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
    """acc(10 steps) <= acc(1 step) + one example, for first-pass PGD at two budgets."""
    first = InferenceModel(trained_net, 0, "first")
    x, y = sample_splits.test.x[:64], sample_splits.test.y[:64]
    for eps in (0.02, 0.05):
        accs = [accuracy(first, LinfPGDAttack(eps, steps=s, seed=0).perturb(first, x, y), y) for s in (1, 10)]
        assert accs[1] <= accs[0] + 1 / 64, (eps, accs)


def test_e2e_attack_through_the_unrolled_cnnf(trained_net: FeedbackNet, sample_splits: DataSplits) -> None:
    """Gradients flow through T=1 feedback iterations and the result is still in budget."""
    scored = InferenceModel(trained_net, 1, "avg")
    x, y = sample_splits.test.x[:16], sample_splits.test.y[:16]
    x_adv = LinfPGDAttack(0.05, steps=2, seed=0).perturb(scored, x, y)
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert not torch.equal(x_adv, x)


def test_create_attack_by_name() -> None:
    assert "pgd_linf" in attack_names()
    attack = create_attack("pgd_linf", eps_pixels=0.1, steps=2)
    assert isinstance(attack, LinfPGDAttack) and attack.steps == 2 and attack.eps == pytest.approx(EPS_INPUT)
    with pytest.raises(ValueError) as info:
        create_attack("cw_l2", eps_pixels=0.1)
    assert "cw_l2" in str(info.value)
    for name in attack_names():
        assert name in str(info.value)
