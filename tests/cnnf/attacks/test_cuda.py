"""Every attack on CUDA: the result and every draw stay on x's device, and
the deterministic gradient attacks agree with the CPU.

Runs only where a CUDA device is visible (the CI machine has none)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from cnnf.attacks import attack_names
from tests.cnnf.attacks.conftest import build
from tests.cnnf.attacks.test_contract import within_budget

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls, to compare with the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", attack_names())
def test_attack_runs_on_the_device_of_x(name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    net = copy.deepcopy(tiny_net).cuda()
    x, y = batch[0].cuda(), batch[1].cuda()
    attack = build(name, net)
    x_adv = attack.perturb(net, x, y)
    assert x_adv.device == x.device and x_adv.dtype == x.dtype
    within_budget(attack, x_adv, x)
    g = torch.Generator(device="cuda").manual_seed(3)
    assert torch.equal(attack.perturb(net, x, y, g), attack.perturb(net, x, y, torch.Generator(device="cuda").manual_seed(3)))
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["fgsm", "bim", "mim", "deepfool"])
def test_deterministic_attacks_agree_with_the_cpu(name: str, no_tf32: None, tiny_net: nn.Module,
                                                  batch: tuple[Tensor, Tensor]) -> None:
    x, y = batch
    cpu = build(name).perturb(tiny_net, x, y)
    net = copy.deepcopy(tiny_net).cuda()
    gpu = build(name).perturb(net, x.cuda(), y.cuda()).cpu()
    agree = ((cpu - gpu).flatten(1).abs().max(1).values < 1e-4).float().mean()
    assert agree >= 0.9  # a sign flip at a near-zero gradient can move one example
