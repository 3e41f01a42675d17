"""Transfer: the base attack run against the source, never against the target."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnf.attacks import TransferAttack, create_attack
from tests.cnnf.attacks.conftest import accuracy


def never_called(x: Tensor) -> Tensor:
    raise AssertionError("a transfer attack must not query the target")


def test_from_the_model_itself_it_is_the_base_attack(tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    for base, kwargs in (("pgd_linf", dict(steps=5)), ("mim", {}), ("pgd_l2", dict(steps=5))):
        eps = 0.5 if base == "pgd_l2" else 0.03
        transfer = create_attack("transfer", eps_pixels=eps, source=tiny_net, base=base, **kwargs)
        direct = create_attack(base, eps_pixels=eps, **kwargs)
        assert torch.equal(transfer.perturb(never_called, x, y), direct.perturb(tiny_net, x, y))
        assert transfer.norm == direct.norm and transfer.stochastic == direct.stochastic


def test_from_another_model_it_is_weaker_than_white_box(tiny_net: nn.Module, other_net: nn.Module,
                                                       batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    transfer = TransferAttack(0.1, other_net, steps=10)
    assert transfer.gradient_free and transfer.norm == "linf" and transfer.stochastic
    transferred = accuracy(tiny_net, transfer.perturb(never_called, x, y), y)
    white_box = accuracy(tiny_net, create_attack("pgd_linf", eps_pixels=0.1, steps=10).perturb(tiny_net, x, y), y)
    assert white_box < transferred < accuracy(tiny_net, x, y)
