"""Our gradient attacks against an independent implementation: the
Adversarial Robustness Toolbox (ART, the `test` extra).

ART works on [0, 1] images: it attacks f01(x) = model(2x - 1) with the same
budgets in pixel units, and its result mapped back, 2 * x01_adv - 1, must
equal ours. Deterministic settings only (no random start, success tracking
off), so the two compute the same iterates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from cnnf.attacks import Attack, FGSMAttack, L2PGDAttack, LinfPGDAttack, MIMAttack


class Pixels01(nn.Module):
    """The model seen from [0, 1] pixels."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x01: Tensor) -> Tensor:
        return self.net(2 * x01 - 1)


CASES = {
    "fgsm": (FGSMAttack(0.05), lambda clf: FastGradientMethod(clf, eps=0.05)),
    "pgd_linf": (
        LinfPGDAttack(0.05, 10, 0.01, random_start=False, track_success=False),
        lambda clf: ProjectedGradientDescent(clf, eps=0.05, eps_step=0.01, max_iter=10, num_random_init=0, verbose=False),
    ),
    "pgd_l2": (
        L2PGDAttack(0.5, 10, 0.1, random_start=False, track_success=False),
        lambda clf: ProjectedGradientDescent(clf, norm=2, eps=0.5, eps_step=0.1, max_iter=10, num_random_init=0, verbose=False),
    ),
    "mim": (
        MIMAttack(0.05, 10, track_success=False),  # step eps / steps = 0.005, decay 1
        lambda clf: ProjectedGradientDescent(clf, eps=0.05, eps_step=0.005, max_iter=10, num_random_init=0, decay=1.0,
                                             verbose=False),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_adversarial_robustness_toolbox(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    attack, make_oracle = CASES[name]
    assert isinstance(attack, Attack)
    x, y = batch
    classifier = PyTorchClassifier(Pixels01(tiny_net), nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                   nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    x01_adv = make_oracle(classifier).generate(((x + 1) / 2).numpy(), y=y.numpy())
    expected = 2 * torch.from_numpy(np.asarray(x01_adv, dtype=np.float32)) - 1
    ours = attack.perturb(tiny_net, x, y)
    assert (expected - x).abs().mean() > 0.01, "the oracle must actually move the images"
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
