"""cnnf.functional against hand-computed cases (cnnf-spec "Layers")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cnnf.functional import (
    PoolSelection,
    ada_pool,
    ada_pool_feedback,
    ada_relu,
    ada_relu_feedback,
    channels_last_grad,
    gate_mask,
    l2_instance_norm,
    straight_through_enabled,
    straight_through_gates,
    tied_conv_transpose,
    tied_linear_transpose,
)


def t(values, **kw) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, **kw)


# ---------------------------------------------------------------- instance norm


def test_l2_instance_norm_hand_computed() -> None:
    """x / sqrt(mean(x^2) + 1e-8): mean of squares of [1,2,3,4] is 7.5."""
    x = t([[[[1.0, 2.0], [3.0, 4.0]]]])
    r = math.sqrt(7.5 + 1e-8)
    expected = t([[[[1 / r, 2 / r], [3 / r, 4 / r]]]])
    torch.testing.assert_close(l2_instance_norm(x), expected)
    # 1 / sqrt(7.5) written out, so the formula above is not the only oracle.
    torch.testing.assert_close(l2_instance_norm(x)[0, 0, 0, 0], t(0.36514837), rtol=1e-6, atol=0)


def test_l2_instance_norm_gradients_match_the_plain_formula() -> None:
    """The hand-written backward (first and second order) equals autograd of
    x * rsqrt(mean_HW(x^2) + eps), in float64, channels-last input included."""
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        a = inp.clone().requires_grad_(True)
        b = inp.clone().requires_grad_(True)
        g = torch.randn_like(x)
        ya = l2_instance_norm(a)
        yb = b * torch.rsqrt(b.pow(2).mean(dim=(-2, -1), keepdim=True) + 1e-8)
        torch.testing.assert_close(ya, yb)
        (ga,) = torch.autograd.grad(ya, a, g, create_graph=True)
        (gb,) = torch.autograd.grad(yb, b, g, create_graph=True)
        torch.testing.assert_close(ga, gb)
        v = torch.randn_like(x)
        (gga,) = torch.autograd.grad(ga, a, v)
        (ggb,) = torch.autograd.grad(gb, b, v)
        torch.testing.assert_close(gga, ggb)
    assert torch.autograd.gradcheck(l2_instance_norm, (x.clone().requires_grad_(True),))


def test_l2_instance_norm_no_mean_subtraction() -> None:
    """A constant map becomes all ones (a mean-subtracting norm would give 0), signs are kept."""
    const = torch.full((1, 1, 2, 2), 3.0)
    torch.testing.assert_close(l2_instance_norm(const), torch.ones(1, 1, 2, 2))
    signed = t([[[[-2.0, 2.0], [-2.0, 2.0]]]])
    torch.testing.assert_close(l2_instance_norm(signed), t([[[[-1.0, 1.0], [-1.0, 1.0]]]]))


def test_l2_instance_norm_per_sample_and_channel() -> None:
    """Each (sample, channel) plane is normalised by its own RMS only."""
    x = t(
        [
            [[[1.0, 2.0], [3.0, 4.0]], [[10.0, 0.0], [0.0, 0.0]]],  # sample 0: RMS^2 7.5 and 25
            [[[0.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]],  # sample 1: RMS^2 4 and 1
        ]
    )
    r = math.sqrt(7.5)
    expected = t(
        [
            [[[1 / r, 2 / r], [3 / r, 4 / r]], [[2.0, 0.0], [0.0, 0.0]]],
            [[[0.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]],
        ]
    )
    torch.testing.assert_close(l2_instance_norm(x), expected)
    y = x.clone()
    y[0, 1] *= 100.0  # scaling one channel leaves the others untouched
    torch.testing.assert_close(l2_instance_norm(y)[0, 0], expected[0, 0])
    torch.testing.assert_close(l2_instance_norm(y)[1], expected[1])


def test_l2_instance_norm_zero_plane_is_finite() -> None:
    """The 1e-8 keeps an all-zero channel at 0 instead of NaN."""
    out = l2_instance_norm(torch.zeros(1, 2, 3, 3))
    assert torch.equal(out, torch.zeros(1, 2, 3, 3))


# ---------------------------------------------------------------- AdaReLU


def test_ada_relu_first_pass_is_relu() -> None:
    f = t([[2.0, -1.0, 0.0, 0.5]])
    out, gate = ada_relu(f, None, eta=0.5)
    assert torch.equal(out, t([[2.0, 0.0, 0.0, 0.5]]))
    assert torch.equal(gate > 0, torch.tensor([[True, False, False, True]]))
    assert torch.equal(gate_mask(gate), t([[1.0, 0.0, 0.0, 1.0]]))


def test_ada_relu_later_pass_hand_computed() -> None:
    """f' = f + eta (g - f), output f' * [f' g > 0].

    f   = [ 2,   -1,   0.5,  -3,   5  ]
    g   = [ 1,   -2,   0,     4,  -1  ]
    f'  = [ 1.5, -1.5, 0.25,  0.5, 2.0]   (eta = 0.5)
    f'g = [ 1.5,  3,   0,     2,  -2  ]  -> mask [1, 1, 0, 1, 0]
    out = [ 1.5, -1.5, 0,     0.5, 0  ]
    """
    f = t([[2.0, -1.0, 0.5, -3.0, 5.0]])
    g = t([[1.0, -2.0, 0.0, 4.0, -1.0]])
    out, gate = ada_relu(f, g, eta=0.5)
    mask = gate > 0
    assert torch.equal(mask, torch.tensor([[True, True, False, True, False]]))
    assert torch.equal(gate, t([[1.5, 1.5, 0.0, 0.5, -2.0]]))  # sign(g) f'
    assert torch.equal(out, t([[1.5, -1.5, 0.0, 0.5, 0.0]]))
    assert out[0, 1] < 0, "where g < 0 a negative value passes"
    assert out[0, 2] == 0 and not mask[0, 2], "where g == 0 the unit is off"
    assert out[0, 4] == 0, "a positive f' against a negative g is off"


def test_ada_relu_update_is_not_a_running_state() -> None:
    """Two later passes with the same f and g give the same output (f' starts from the fresh f)."""
    f, g = t([[0.4, -0.2]]), t([[-1.0, 1.0]])
    a, _ = ada_relu(f, g, eta=0.1)
    b, _ = ada_relu(f, g, eta=0.1)
    assert torch.equal(a, b)
    # f' = [0.4 - 0.14, -0.2 + 0.12] = [0.26, -0.08]: both disagree with g in sign -> off
    assert torch.equal(a, t([[0.0, 0.0]]))


def test_ada_relu_feedback_masks() -> None:
    s = t([[1.0, -2.0, 3.0, 4.0, 5.0]])
    gate = t([[0.5, -1.0, 0.0, 2.0, -0.0]])  # active where the gate is > 0
    assert torch.equal(ada_relu_feedback(s, gate), t([[1.0, 0.0, 0.0, 4.0, 0.0]]))


def test_ada_relu_feedback_is_differentiable_in_the_signal() -> None:
    s = t([[1.0, -2.0, 3.0]]).requires_grad_(True)
    gate = t([[1.0, -1.0, 2.0]])
    (grad,) = torch.autograd.grad(ada_relu_feedback(s, gate).sum(), s)
    assert torch.equal(grad, t([[1.0, 0.0, 1.0]]))


def test_ada_relu_gradient_is_the_masked_identity() -> None:
    """d out / d f is (1 - eta) on active units and 0 elsewhere, as for f' * mask;
    d out / d g is eta there (through f'), the gate itself carries no gradient."""
    f = t([[2.0, -1.0, 0.5, -3.0, 5.0]]).requires_grad_(True)
    g = t([[1.0, -2.0, 0.0, 4.0, -1.0]]).requires_grad_(True)
    out, gate = ada_relu(f, g, eta=0.5)
    grad_f, grad_g = torch.autograd.grad(out.sum(), (f, g))
    assert torch.equal(grad_f, 0.5 * gate_mask(gate))
    assert torch.equal(grad_g, 0.5 * gate_mask(gate))
    assert not gate.requires_grad
    _, first_gate = ada_relu(f, None, eta=0.5)
    assert not first_gate.requires_grad


# ---------------------------------------------------------------- AdaPool

# Windows (2x2), values and flat indices into the 4x4 plane:
#   top-left     1  5 / 3 -4  max 5 @1,  min -4 @5
#   top-right   -2  0 / 7 -8  max 7 @6,  min -8 @7
#   bottom-left .5  2 /-1  9  max 9 @13, min -1 @12
#   bottom-right 6  1 /-3  4  max 6 @10, min -3 @14
POOL_X = t(
    [
        [
            [
                [1.0, 5.0, -2.0, 0.0],
                [3.0, -4.0, 7.0, -8.0],
                [0.5, 2.0, 6.0, 1.0],
                [-1.0, 9.0, -3.0, 4.0],
            ]
        ]
    ]
)


def test_ada_pool_first_pass_is_max_pool() -> None:
    out, sel = ada_pool(POOL_X, None)
    assert torch.equal(out, t([[[[5.0, 7.0], [9.0, 6.0]]]]))
    assert torch.equal(sel.index, torch.tensor([[[[1, 6], [13, 10]]]]))
    ref, ref_index = F.max_pool2d(POOL_X, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(sel.index, ref_index)


def test_ada_pool_later_pass_max_min_zero() -> None:
    """g > 0: max; g < 0: min; g == 0: 0."""
    g = t([[[[1.0, -1.0], [0.0, 2.5]]]])
    out, sel = ada_pool(POOL_X, g)
    assert torch.equal(out, t([[[[5.0, -8.0], [0.0, 6.0]]]]))
    assert sel.active is not None
    assert torch.equal(sel.active, torch.tensor([[[[True, True], [False, True]]]]))
    assert sel.index[0, 0, 0, 0] == 1 and sel.index[0, 0, 0, 1] == 7 and sel.index[0, 0, 1, 1] == 10


def test_ada_pool_feedback_after_first_pass_unpools_to_max_positions() -> None:
    _, sel = ada_pool(POOL_X, None)
    s = t([[[[10.0, 20.0], [30.0, 40.0]]]])
    expected = t(
        [
            [
                [
                    [0.0, 10.0, 0.0, 0.0],
                    [0.0, 0.0, 20.0, 0.0],
                    [0.0, 0.0, 40.0, 0.0],
                    [0.0, 30.0, 0.0, 0.0],
                ]
            ]
        ]
    )
    assert torch.equal(ada_pool_feedback(s, sel, (4, 4)), expected)


def test_ada_pool_feedback_follows_latest_selection() -> None:
    """Max position where g > 0, min position where g < 0, nothing where g == 0."""
    g = t([[[[1.0, -1.0], [0.0, 2.5]]]])
    _, sel = ada_pool(POOL_X, g)
    s = t([[[[10.0, 20.0], [30.0, 40.0]]]])
    expected = t(
        [
            [
                [
                    [0.0, 10.0, 0.0, 0.0],  # max of top-left at (0, 1)
                    [0.0, 0.0, 0.0, 20.0],  # min of top-right at (1, 3)
                    [0.0, 0.0, 40.0, 0.0],  # max of bottom-right at (2, 2)
                    [0.0, 0.0, 0.0, 0.0],  # bottom-left was off (g == 0): nothing
                ]
            ]
        ]
    )
    assert torch.equal(ada_pool_feedback(s, sel, (4, 4)), expected)


def test_ada_pool_feedback_is_transpose_of_selection() -> None:
    """<unpool(s), v> == <s, gather(v)*active> for the selection of a later pass."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    g = torch.randn(2, 3, 3, 3)
    g[0, 0, 0, 0] = 0.0
    out, sel = ada_pool(x, g)
    gathered = x.flatten(2).gather(2, sel.index.flatten(2)).view_as(out) * sel.active
    torch.testing.assert_close(gathered, out)  # the record is what the forward used
    s, v = torch.randn(2, 3, 3, 3), torch.randn(2, 3, 6, 6)
    lhs = (ada_pool_feedback(s, sel, (6, 6)) * v).sum()
    rhs = (s * v.flatten(2).gather(2, sel.index.flatten(2)).view_as(s) * sel.active).sum()
    torch.testing.assert_close(lhs, rhs)


def test_ada_pool_later_pass_gradient_matches_the_autograd_formula() -> None:
    """The hand-written scatter backward equals autograd of where(g > 0, max,
    where(g < 0, min, 0)) in float64, channels-last input included; the
    selection gives g no gradient."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    g = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    g[0, 0, 0, 0] = g[1, 2, 1, 1] = 0.0
    up = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        a = inp.clone().requires_grad_(True)
        b = inp.clone().requires_grad_(True)
        gg = g.clone().requires_grad_(True)
        out, _ = ada_pool(a, gg)
        ref = torch.where(g > 0, F.max_pool2d(b, 2), torch.where(g < 0, -F.max_pool2d(-b, 2), 0.0))
        torch.testing.assert_close(out, ref)
        (ga,) = torch.autograd.grad(out, a, up)
        (gb,) = torch.autograd.grad(ref, b, up)
        torch.testing.assert_close(ga, gb)
        assert out.grad_fn is not None and torch.autograd.grad(out.sum(), gg, allow_unused=True)[0] is None


def test_channels_last_grad_is_identity_with_a_channels_last_gradient() -> None:
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = channels_last_grad(x)
    assert torch.equal(y, x)
    up = torch.randn(2, 3, 4, 4)  # NCHW-contiguous incoming gradient
    (grad,) = torch.autograd.grad(y, x, up)
    assert torch.equal(grad, up) and grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
    plain = torch.randn(2, 3, 4, 4)
    assert channels_last_grad(plain) is plain  # nothing to do without a graph


def test_pool_selection_is_a_namedtuple() -> None:
    sel = PoolSelection(torch.zeros(1, dtype=torch.long), None)
    assert sel.active is None and sel._fields == ("index", "active")


# ---------------------------------------------------------------- tied transposes


def conv_vjp(x: Tensor, w: Tensor, s: Tensor, stride: int, padding: int) -> Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.conv2d(x, w, None, stride, padding), x, grad_outputs=s)
    return grad


@pytest.mark.parametrize(
    ("stride", "padding", "size"),
    [
        (1, 0, (5, 6)),
        (1, 1, (5, 5)),
        (2, 1, (7, 7)),  # odd: no output_padding needed
        (2, 1, (8, 8)),  # even: output_padding 1 restores the size
        (2, 1, (7, 8)),  # mixed
        (2, 0, (8, 9)),
    ],
)
def test_tied_conv_transpose_is_conv_vjp(stride: int, padding: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y_shape = F.conv2d(x, w, None, stride, padding).shape
    s = torch.randn(y_shape, dtype=torch.float64)
    out = tied_conv_transpose(s, w, stride, padding, size)
    assert out.shape == x.shape
    torch.testing.assert_close(out, conv_vjp(x, w, s, stride, padding))


def test_tied_linear_transpose_is_linear_vjp() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    s = torch.randn(3, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad(F.linear(x, w, b), x, grad_outputs=s)
    torch.testing.assert_close(tied_linear_transpose(s, w), grad)


# --- straight-through (BPDA) gates --------------------------------------------


def _grads(fn, *inputs: Tensor, straight: bool) -> tuple[Tensor, list[Tensor]]:
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    with straight_through_gates(straight):
        out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return out.detach(), list(torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True))


def test_straight_through_keeps_values_and_is_scoped() -> None:
    f, g = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    exact, _ = _grads(lambda a: ada_relu(a, g, 0.5)[0], f, straight=False)
    st, _ = _grads(lambda a: ada_relu(a, g, 0.5)[0], f, straight=True)
    assert torch.equal(exact, st), "the forward values are bit-identical"
    assert not straight_through_enabled()
    with straight_through_gates():
        assert straight_through_enabled()
        with straight_through_gates(False):
            assert not straight_through_enabled()
        assert straight_through_enabled()
    assert not straight_through_enabled()


def test_straight_through_ada_relu_is_identity_backward() -> None:
    """Later-pass AdaReLU: d out / d f' = 1 everywhere, so d out / d f = 1 - eta
    and d out / d g = eta (the lerp), where the exact gradient is masked."""
    f, g, eta = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), 0.3
    _, (gf, gg) = _grads(lambda a, b: ada_relu(a, b, eta)[0], f, g, straight=True)
    w = torch.randn(f.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gf, (1 - eta) * w)
    torch.testing.assert_close(gg, eta * w)
    _, (ef, _) = _grads(lambda a, b: ada_relu(a, b, eta)[0], f, g, straight=False)
    assert (ef == 0).any() and not (gf == 0).any()
    # the first pass stays a plain ReLU: its gradient is masked in both modes
    _, (first,) = _grads(lambda a: ada_relu(a, None, eta)[0], f, straight=True)
    torch.testing.assert_close(first, w * (f > 0))


def test_straight_through_feedback_mask_passes_everything() -> None:
    s, gate = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    _, (gs,) = _grads(lambda a: ada_relu_feedback(a, gate), s, straight=True)
    torch.testing.assert_close(gs, torch.randn(s.shape, generator=torch.Generator().manual_seed(1)))


def test_straight_through_ada_pool_spreads_over_the_window() -> None:
    """Later-pass AdaPool backward = average pooling's (grad / 4 on every cell
    of an active window, 0 where g == 0); unpooling backward = its adjoint."""
    x = torch.randn(2, 3, 4, 4)
    g = torch.randn(2, 3, 2, 2)
    g[0, 0, 0, 0] = 0.0
    _, (gx,) = _grads(lambda a: ada_pool(a, g)[0], x, straight=True)
    w = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    expected = F.interpolate(w * (g != 0), scale_factor=2, mode="nearest") / 4
    torch.testing.assert_close(gx, expected)
    selection = ada_pool(x, g)[1]
    s = torch.randn(2, 3, 2, 2)
    _, (gs,) = _grads(lambda a: ada_pool_feedback(a, selection, (4, 4)), s, straight=True)
    w4 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gs, F.avg_pool2d(w4, 2) * (g != 0))  # a unit whose output was 0 stays 0


def test_bpda_inference_model_same_logits_other_gradient() -> None:
    from cnnf.models import InferenceModel, create_model

    torch.manual_seed(0)
    net = create_model("cnnf_fmnist_adv", ind=0).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    exact, (g_exact,) = _grads(InferenceModel(net, 2, "avg"), x, straight=False)
    bpda, (g_bpda,) = _grads(InferenceModel(net, 2, "avg", gates="bpda"), x, straight=False)
    assert torch.equal(exact, bpda)
    assert not torch.allclose(g_exact, g_bpda)
    with pytest.raises(ValueError, match="gates must be one of"):
        InferenceModel(net, 2, "avg", gates="soft")
