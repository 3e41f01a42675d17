"""cnnf.layers: the tied feedback of each wrapper is the transpose of its forward."""

from __future__ import annotations

import pytest
import torch

from cnnf.functional import l2_instance_norm
from cnnf.layers import InstanceNormBias, TiedConv2d, TiedLinear


@pytest.mark.parametrize(("stride", "padding", "size"), [(1, 0, (6, 6)), (1, 1, (5, 7)), (2, 1, (8, 8)), (2, 1, (7, 7))])
def test_tied_conv2d_feedback_is_vjp(stride: int, padding: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = TiedConv2d(3, 4, 3, stride=stride, padding=padding).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    s = torch.randn_like(y)
    (vjp,) = torch.autograd.grad(y, x, grad_outputs=s)
    out = conv.feedback(s, size)
    assert out.shape == x.shape
    torch.testing.assert_close(out, vjp)


def test_tied_conv2d_has_no_bias_and_one_weight() -> None:
    conv = TiedConv2d(2, 3, 3)
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight))


def test_tied_linear_feedback_is_vjp_and_ignores_bias() -> None:
    torch.manual_seed(0)
    fc = TiedLinear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y = fc(x)
    s = torch.randn_like(y)
    (vjp,) = torch.autograd.grad(y, x, grad_outputs=s)
    torch.testing.assert_close(fc.feedback(s), vjp)
    torch.testing.assert_close(y, x @ fc.weight.T + fc.bias)


def test_tied_linear_feedback_shares_the_weight_parameter() -> None:
    """Gradient through the feedback lands on the same parameter (no `.data` tying)."""
    fc = TiedLinear(3, 2)
    assert sorted(n for n, _ in fc.named_parameters()) == ["bias", "weight"]
    fc.feedback(torch.ones(1, 2)).sum().backward()
    assert fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0


def test_instance_norm_bias_zero_init_and_value() -> None:
    norm = InstanceNormBias(3)
    assert norm.bias.shape == (3,)
    assert torch.equal(norm.bias.detach(), torch.zeros(3))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(norm(x), l2_instance_norm(x))
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    expected = x / torch.sqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8) + torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
