"""Our attacks against an independent implementation: the Adversarial
Robustness Toolbox (ART, the `test` extra).

ART works on [0, 1] images: it attacks f01(x) = model(2x - 1) with the same
budgets in pixel units, and its result mapped back, 2 * x01_adv - 1, must
equal ours. FGSM, PGD and MIM with deterministic settings (no random start,
success tracking off), so the two compute the same iterates; APGD and Square
(random starts, random search) by the accuracy each leaves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import AutoProjectedGradientDescent, FastGradientMethod, ProjectedGradientDescent, SquareAttack
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from cnnf.attacks import Attack, FGSMAttack, L2PGDAttack, LinfPGDAttack, MIMAttack, create_attack
from cnnf.models import InferenceModel
from tests.cnnf.attacks.conftest import accuracy


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


# ---------------------------------------------------------------------------
# APGD and Square: random starts and random search, so no iterate-by-iterate
# match; ours must be at least as strong as ART's on the same model, images
# and budget (accuracy no higher than the oracle's plus ORACLE_SLACK).

ORACLE_SLACK = 2 / 64  # two images of the 64 compared


def _art_classifier(predict: nn.Module, x: Tensor) -> PyTorchClassifier:
    return PyTorchClassifier(Pixels01(predict), nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
                             clip_values=(0.0, 1.0), device_type="cpu")


def _oracle_accuracy(predict: nn.Module, attack, x: Tensor, y: Tensor) -> float:
    x01_adv = attack.generate(((x + 1) / 2).numpy(), y=y.numpy())
    expected = 2 * torch.from_numpy(np.asarray(x01_adv, dtype=np.float32)) - 1
    return accuracy(predict, expected, y)


APGD_CASES = {  # ours, ART's loss_type, ART's norm, budget in pixel units
    "apgd_ce_linf": ("apgd_ce", "cross_entropy", np.inf, 0.03),
    "apgd_dlr_linf": ("apgd_dlr", "difference_logits_ratio", np.inf, 0.03),
    "apgd_ce_l2": ("apgd_ce", "cross_entropy", 2, 0.6),
}


def _compare_apgd(case: str, predict: nn.Module, x: Tensor, y: Tensor, steps: int) -> tuple[float, float, float]:
    name, loss, norm, eps = APGD_CASES[case]
    # ART starts its step at 2 * eps_step (Croce & Hein: 2 * eps); one random start each.
    oracle = AutoProjectedGradientDescent(_art_classifier(predict, x), norm=norm, eps=eps, eps_step=eps, max_iter=steps,
                                          nb_random_init=1, batch_size=len(x), loss_type=loss, verbose=False)
    ours = create_attack(name, eps_pixels=eps, steps=steps, norm="linf" if norm == np.inf else "l2")
    return accuracy(predict, x, y), _oracle_accuracy(predict, oracle, x, y), accuracy(predict, ours.perturb(predict, x, y), y)


@pytest.mark.parametrize("case", sorted(APGD_CASES))
def test_apgd_is_as_strong_as_the_toolbox_on_a_cnn(case: str, tiny_net: nn.Module, batch64: tuple[Tensor, Tensor]) -> None:
    x, y = batch64
    clean, oracle, ours = _compare_apgd(case, tiny_net, x, y, steps=100)
    assert oracle < clean - 0.05, f"the budget must let the oracle break images (clean {clean}, oracle {oracle})"
    assert ours <= oracle + ORACLE_SLACK, f"ours {ours:.3f} vs ART {oracle:.3f} (clean {clean:.3f})"


def test_apgd_is_as_strong_as_the_toolbox_on_a_cnnf_end_to_end(trained_net: nn.Module, batch64: tuple[Tensor, Tensor]) -> None:
    e2e = InferenceModel(trained_net, 1, "avg").eval()
    x, y = batch64
    clean, oracle, ours = _compare_apgd("apgd_ce_linf", e2e, x, y, steps=25)  # ~4 s: 26 CNN-F forward-backward passes each
    assert oracle < clean - 0.05, f"the budget must let the oracle break images (clean {clean}, oracle {oracle})"
    assert ours <= oracle + ORACLE_SLACK, f"ours {ours:.3f} vs ART {oracle:.3f} (clean {clean:.3f})"


def test_square_is_as_strong_as_the_toolbox(tiny_net: nn.Module, batch64: tuple[Tensor, Tensor]) -> None:
    """Same query budget, same p_init, one restart, on the tiny CNN seen only through its outputs."""
    x, y = batch64
    eps, queries = 0.05, 300
    oracle = SquareAttack(_art_classifier(tiny_net, x), norm=np.inf, eps=eps, max_iter=queries, p_init=0.8, nb_restarts=1,
                          batch_size=len(x), verbose=False)
    theirs = _oracle_accuracy(tiny_net, oracle, x, y)
    ours = accuracy(tiny_net, create_attack("square", eps_pixels=eps, queries=queries).perturb(tiny_net, x, y), y)
    assert theirs < accuracy(tiny_net, x, y) - 0.05
    assert ours <= theirs + ORACLE_SLACK, f"ours {ours:.3f} vs ART {theirs:.3f}"
