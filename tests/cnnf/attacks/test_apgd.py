"""APGD (Croce & Hein 2020): the checkpoint schedule, the DLR losses, the
step-size rule, APGD-T's targets, batching; the comparison with an
independent implementation is in test_oracle.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from cnnf.attacks import APGDCEAttack, APGDTargetedAttack, create_attack
from cnnf.attacks.apgd import checkpoints, dlr_loss, targeted_dlr_loss
from tests.cnnf.attacks.conftest import accuracy


def test_checkpoints_follow_the_paper() -> None:
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N)."""
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]  # ceil(2.2), ceil(4.1), ... and 0.99 -> 10
    assert checkpoints(1) == [1]


def test_dlr_loss_by_hand_and_invariant_to_logit_scale_and_shift() -> None:
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0], [0.0, 2.0, 1.0, 5.0]])
    y = torch.tensor([0, 1])
    # Example 0: z_y = 4, best other 3, sorted 4 3 1 0: -(4 - 3) / (4 - 1). Example 1: -(2 - 5) / (5 - 1).
    torch.testing.assert_close(dlr_loss(logits, y), torch.tensor([-1 / 3, 3 / 4]))
    torch.testing.assert_close(dlr_loss(7 * logits - 2, y), dlr_loss(logits, y))
    # Targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
    t = torch.tensor([2, 3])
    torch.testing.assert_close(targeted_dlr_loss(logits, y, t), torch.tensor([-(4 - 3) / (4 - 0.5), -(2 - 5) / (5 - 0.5)]))
    torch.testing.assert_close(targeted_dlr_loss(3 * logits + 1, y, t), targeted_dlr_loss(logits, y, t))


def test_the_step_is_halved_at_every_checkpoint_when_the_loss_never_rises(batch: tuple[Tensor, Tensor]) -> None:
    """Condition 1: a constant loss never rises, so every checkpoint halves
    the step, from 2 eps: 8 checkpoints in 100 iterations."""
    x, y = batch[0][:4], batch[1][:4]
    weight = torch.zeros(10, x[0].numel(), requires_grad=True)

    def constant(images: Tensor) -> Tensor:  # differentiable, but the logits do not depend on the images
        return images.flatten(1) @ weight.t() + torch.arange(10.0)

    attack = APGDCEAttack(0.05, steps=100)
    attack.perturb(constant, x, torch.full_like(y, 9))  # predicted: never fooled, so every iteration runs
    torch.testing.assert_close(attack.last_step, torch.full((4,), 2 * attack.eps / 2**8))


def test_a_rising_loss_keeps_the_step(batch: tuple[Tensor, Tensor]) -> None:
    """One iteration, one checkpoint (w_1 = 1) after a step that raised the
    loss (a linear model, stepping along its gradient): neither condition
    holds, the step stays 2 eps."""
    x, y = batch[0][:4], batch[1][:4]
    direction = torch.randn(10, x[0].numel(), generator=torch.Generator().manual_seed(0))

    def linear(images: Tensor) -> Tensor:
        return images.flatten(1) @ direction.t() * 1e-3  # too small to fool anyone

    attack = APGDCEAttack(0.05, steps=1, random_start=False)
    attack.perturb(linear, x, linear(x).argmax(1))
    torch.testing.assert_close(attack.last_step, torch.full((4,), 2 * attack.eps))


def test_apgd_t_attacks_each_target_class_in_turn(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Runs = targets x restarts, at most the K - 1 wrong classes; more
    targets never break fewer examples (the first runs are the same)."""
    x, y = batch
    assert APGDTargetedAttack(0.03, n_targets=9, restarts=2).runs(10) == 18
    assert APGDTargetedAttack(0.03, n_targets=20).runs(10) == 9
    broken = [accuracy(tiny_net, APGDTargetedAttack(0.03, steps=10, n_targets=k).perturb(tiny_net, x, y), y) for k in (1, 3)]
    assert broken[1] <= broken[0]


def test_losses_that_need_more_classes_say_so(batch: tuple[Tensor, Tensor]) -> None:
    x = batch[0][:2]
    three = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 3))
    with pytest.raises(ValueError, match="dlr_targeted loss needs at least 4 classes, the model has 3"):
        APGDTargetedAttack(0.03, steps=2).perturb(three, x, torch.tensor([0, 1]))
    create_attack("apgd_dlr", eps_pixels=0.03, steps=2).perturb(three, x, torch.tensor([0, 1]))  # 3 classes suffice


@pytest.mark.parametrize("name", ["apgd_ce", "apgd_t", "square"])
def test_max_batch_does_not_change_the_result(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Every draw is made for the whole batch and every example's trajectory
    is its own: predict calls of 5 rows give the same adversarials as one call
    (in float64: in float32 the convolutions' rounding depends on the batch
    size, enough to flip the sign of a near-zero gradient now and then)."""
    tiny_net = copy.deepcopy(tiny_net).double()
    x, y = batch[0].double(), batch[1]
    kwargs = dict(queries=30) if name == "square" else dict(steps=10, n_targets=2)
    kwargs = {k: v for k, v in kwargs.items() if not (name == "apgd_ce" and k == "n_targets")}
    whole = create_attack(name, eps_pixels=0.03, **kwargs).perturb(tiny_net, x, y)
    split = create_attack(name, eps_pixels=0.03, max_batch=5, **kwargs).perturb(tiny_net, x, y)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(norm="l1"), "norm"), (dict(steps=0), "steps"), (dict(restarts=0), "restarts"),
    (dict(n_targets=0), "n_targets"), (dict(max_batch=0), "max_batch"),
])
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        create_attack("apgd_t", eps_pixels=0.03, **kwargs)


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_gradient_budget(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    """Per example on a small budget where PGD-20 leaves images standing: APGD-CE
    with 20 iterations breaks at least as many (within one image)."""
    x, y = batch
    pgd = accuracy(tiny_net, create_attack("pgd_linf", eps_pixels=0.02, steps=20).perturb(tiny_net, x, y), y)
    apgd = accuracy(tiny_net, create_attack("apgd_ce", eps_pixels=0.02, steps=20).perturb(tiny_net, x, y), y)
    assert apgd <= pgd + 1 / len(y)
