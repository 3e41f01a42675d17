"""Weight initialisation: the reference's by default, PyTorch's on request (`model.init`).

The reference (the authors' cnnf/layers.py) draws every convolution from
N(0, 2 / (k * k * C_out)) (He-normal over the fan-out) and zeroes the FC
biases; FC weights keep PyTorch's kaiming-uniform. The statistics below are
checked against those formulas, with tolerances of several standard errors
of the sample statistic, so a wrong scheme (or a wrong fan) fails while
sampling noise does not.
"""

from __future__ import annotations

import math

import pytest
import torch

from cnnf.config import ConfigError, ExperimentConfig, ModelConfig
from cnnf.layers import InstanceNormBias, TiedConv2d, TiedLinear, initialize
from cnnf.models import create_model, model_names
from cnnf.train import build_model, transfer_source


def tied(net: torch.nn.Module, kind: type) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def assert_std(w: torch.Tensor, expected: float, where: str) -> None:
    """Sample std within 5 standard errors (se of a std ~ expected / sqrt(2 n))."""
    n = w.numel()
    got = w.double().std().item()
    assert abs(got - expected) <= 5 * expected / math.sqrt(2 * n), f"{where}: std {got:.4f}, expected {expected:.4f} (n={n})"
    assert abs(w.double().mean().item()) <= 5 * expected / math.sqrt(n), f"{where}: mean {w.mean().item():.4g} is not ~0"


def excess_kurtosis(w: torch.Tensor) -> float:
    z = w.double().flatten()
    z = z - z.mean()
    return (z.pow(4).mean() / z.pow(2).mean() ** 2).item() - 3.0


@pytest.mark.parametrize("name", model_names())
def test_reference_init_is_the_default(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name)
    convs, fcs = tied(net, TiedConv2d), tied(net, TiedLinear)
    assert convs and fcs
    for i, conv in enumerate(convs):
        c_out, c_in, kh, kw = conv.weight.shape
        assert_std(conv.weight, math.sqrt(2.0 / (kh * kw * c_out)), f"{name} conv {i} ({c_in}->{c_out}, {kh}x{kw})")
    for i, fc in enumerate(fcs):
        assert torch.equal(fc.bias, torch.zeros_like(fc.bias)), f"{name} fc {i}: reference FC biases are 0"
        bound = 1 / math.sqrt(fc.weight.shape[1])
        assert fc.weight.abs().max() <= bound
        assert_std(fc.weight, bound / math.sqrt(3), f"{name} fc {i}")  # uniform(-b, b) has std b / sqrt(3)
    for norm in tied(net, InstanceNormBias):
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


@pytest.mark.parametrize("name", model_names())
def test_torch_init_is_selectable(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, init="torch")
    for i, conv in enumerate(tied(net, TiedConv2d)):
        fan_in = conv.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)
        assert conv.weight.abs().max() <= bound, f"{name} conv {i}"
        assert_std(conv.weight, bound / math.sqrt(3), f"{name} conv {i}")
    for i, fc in enumerate(tied(net, TiedLinear)):
        bound = 1 / math.sqrt(fc.weight.shape[1])
        assert fc.bias.abs().max() <= bound and (fc.bias != 0).all(), f"{name} fc {i}: PyTorch draws uniform biases"


def test_the_two_schemes_differ_in_shape_not_just_scale() -> None:
    """He-normal is Gaussian (excess kurtosis 0), PyTorch's is uniform (-1.2): on
    the B.2 model's 32->64 conv (18,432 weights, se of the kurtosis ~0.04)."""
    torch.manual_seed(0)
    ref = tied(create_model("cnnf_fmnist_adv"), TiedConv2d)[3].weight
    uni = tied(create_model("cnnf_fmnist_adv", init="torch"), TiedConv2d)[3].weight
    assert ref.shape == uni.shape == (64, 32, 3, 3)
    assert abs(excess_kurtosis(ref)) < 0.25
    assert abs(excess_kurtosis(uni) + 1.2) < 0.25
    # the first B.1 conv: the reference std sqrt(2 / 288) = 0.083, PyTorch's 1 / sqrt(9) / sqrt(3) = 0.19
    first = tied(create_model("cnnf_fmnist_std"), TiedConv2d)[0].weight
    assert_std(first, math.sqrt(2 / (9 * 32)), "B.1 conv1")


def test_init_is_seeded() -> None:
    for scheme in ("reference", "torch"):
        torch.manual_seed(3)
        a = create_model("cnnf_mnist_small", init=scheme).state_dict()
        torch.manual_seed(3)
        b = create_model("cnnf_mnist_small", init=scheme).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_reaches_the_built_model() -> None:
    assert ModelConfig().init == "reference"
    torch.manual_seed(0)
    cfg = ExperimentConfig(model=ModelConfig(init="torch"))
    fcs = tied(build_model(cfg), TiedLinear)
    assert all((fc.bias != 0).all() for fc in fcs)
    torch.manual_seed(0)
    fcs = tied(build_model(ExperimentConfig()), TiedLinear)
    assert all((fc.bias == 0).all() for fc in fcs)
    # the plain CNN a CNN-F starts from (train.init_from_cnn) uses the same scheme
    assert transfer_source(cfg).model.init == "torch"


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        ModelConfig(init="xavier")
    assert info.value.field == "init" and "xavier" in str(info.value)
    with pytest.raises(ValueError, match="init must be one of"):
        create_model("cnnf_fmnist_std", init="xavier")
    with pytest.raises(ValueError, match="init must be one of"):
        initialize(create_model("cnnf_fmnist_std"), "he")
