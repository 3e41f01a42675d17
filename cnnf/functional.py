"""CNN-F math as pure functions (house style 3).

Every function takes tensors and returns tensors (plus the masks or indices
the feedback pass needs); nothing is stored on a module. References are to
Huang et al. 2020 ("Neural Networks with Recurrent Generative Feedback") and
to ../shared/docs/cnnf-spec.md.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IN_EPS = 1e-8


class _L2InstanceNorm(torch.autograd.Function):
    """y = x r (+ bias) with r = (mean_HW(x^2) + eps)^(-1/2), with a hand-written backward

        dL/dx = r g - x r^3 mean_HW(g x),    dL/dbias = sum_{N,H,W} g,

    two passes over the feature map instead of the six that autograd records
    for pow / mean / add / rsqrt / mul / add (the norm runs after every conv
    and conv^T, so this is a measurable share of a CPU training step).
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Optional[Tensor], eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.eps, ctx.has_bias = eps, bias is not None
        r = _inv_rms(x, eps)
        if bias is None:
            return x * r
        return torch.addcmul(bias.view(1, -1, 1, 1).to(x.dtype), x, r)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Optional[Tensor], None]:  # type: ignore[override]
        # Built from differentiable ops on x (r recomputed, a cheap reduction),
        # so second derivatives stay exact under create_graph=True.
        (x,) = ctx.saved_tensors
        r = _inv_rms(x, ctx.eps)  # (N, C, 1, 1)
        m = (g * x).mean(dim=(-2, -1), keepdim=True)  # (N, C, 1, 1)
        grad_x = torch.addcmul(g * r, x, r.pow(3) * m, value=-1)
        grad_bias = g.sum(dim=(0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return grad_x, grad_bias, None


def _inv_rms(x: Tensor, eps: float) -> Tensor:
    """(mean_HW(x^2) + eps)^(-1/2) per sample and channel, (N, C, 1, 1)."""
    return torch.rsqrt(x.square().mean(dim=(-2, -1), keepdim=True) + eps)


def l2_instance_norm(x: Tensor, eps: float = IN_EPS, bias: Optional[Tensor] = None) -> Tensor:
    """Appendix A.4: x / sqrt(mean_HW(x^2) + eps) per sample and channel.

    No mean subtraction and no learnable scale, so the map is positively
    homogeneous and sign-preserving, which the AdaReLU gates rely on.
    bias: optional per-channel (C,) bias added in the same pass (the
    learnable bias that follows the norm in the forward pass).
    x: (N, C, H, W).
    """
    return _L2InstanceNorm.apply(x, bias, eps)


def ada_relu(f: Tensor, g: Tensor | None, eta: float) -> tuple[Tensor, Tensor]:
    """AdaReLU forward (Sec. 3.2, online update of Algorithm 1).

    First pass (g is None): plain ReLU. Later passes: the pre-activation is
    first moved toward the stored feedback, f' = f + eta (g - f), and the unit
    is active where f' and g have the same sign, so where g < 0 negative
    values pass.

    Returns (output, gate). The gate is z = sign(g) f' (f on the first pass):
    the unit is active exactly where z > 0, and the output is sign(g) relu(z),
    i.e. f' where active and 0 elsewhere. Keeping z instead of a 0/1 mask
    makes every use a single fused op (relu, and threshold_backward in the
    feedback) with no bool tensors, which are slow to build on CPU; and the
    sign test cannot underflow the way f' * g > 0 can.
    """
    if g is None:
        return torch.relu(f), f
    f = torch.lerp(f, g.to(f.dtype), eta)  # f + eta (g - f)
    sign_g = torch.sign(g).to(f.dtype)  # +-1, or 0 where the feedback is exactly 0
    z = sign_g * f
    return sign_g * torch.relu(z), z


def gate_mask(gate: Tensor) -> Tensor:
    """The 0/1 mask of an AdaReLU gate (1 where the unit is active), in its dtype."""
    return (gate > 0).to(gate.dtype)


def ada_relu_feedback(s: Tensor, gate: Tensor) -> Tensor:
    """AdaReLU feedback: the top-down signal where the latest forward was active, else 0."""
    # threshold_backward(s, z, 0) = s * [z > 0], one fused op, differentiable in s.
    return torch.ops.aten.threshold_backward(s, gate.to(s.dtype), 0)


class PoolSelection(NamedTuple):
    """Which input position each pooled unit took in the latest forward pass.

    index: (N, C, h, w) flat index into the (H, W) plane, as max_pool2d gives.
    active: (N, C, h, w) 0/1 in the feature dtype; 0 where the unit output 0
        (feedback exactly 0).
    """

    index: Tensor
    active: Tensor | None


def ada_pool(x: Tensor, g: Tensor | None, kernel: int = 2) -> tuple[Tensor, PoolSelection]:
    """AdaPool forward (Sec. 3.2).

    First pass: max-pool. Later passes: max-pool where the feedback g at the
    pooled output is > 0, min-pool where < 0, and 0 where g == 0.
    x: (N, C, H, W); g: (N, C, H / kernel, W / kernel).
    """
    top, top_index = F.max_pool2d(x, kernel, return_indices=True)
    if g is None:
        return top, PoolSelection(top_index, None)
    neg_bottom, bottom_index = F.max_pool2d(-x, kernel, return_indices=True)
    positive, negative = g > 0, g < 0
    out = torch.where(positive, top, torch.where(negative, -neg_bottom, 0.0))
    index = torch.where(negative, bottom_index, top_index)
    return out, PoolSelection(index, (positive | negative).to(x.dtype))


def ada_pool_feedback(
    s: Tensor, selection: PoolSelection, output_size: tuple[int, int], kernel: int = 2
) -> Tensor:
    """AdaPool feedback: unpool s to the positions the latest forward selected.

    Unselected positions (and units whose forward output was 0) get 0, which
    later turns the AdaReLU below them off. s: (N, C, h, w) -> (N, C, H, W).
    """
    if selection.active is not None:
        s = s * selection.active
    return F.max_unpool2d(s, selection.index, kernel, output_size=output_size)


def tied_conv_transpose(
    s: Tensor, weight: Tensor, stride: int, padding: int, output_size: tuple[int, int]
) -> Tensor:
    """Transpose of the bias-free conv with the same weight (the tied feedback).

    output_padding restores the exact input size for strided convs.
    s: (N, C_out, h, w) -> (N, C_in, H, W) with (H, W) = output_size.
    """
    k_h, k_w = weight.shape[-2:]
    h, w = s.shape[-2:]
    pad_h = output_size[0] - ((h - 1) * stride - 2 * padding + k_h)
    pad_w = output_size[1] - ((w - 1) * stride - 2 * padding + k_w)
    return F.conv_transpose2d(s, weight, None, stride, padding, output_padding=(pad_h, pad_w))


def tied_linear_transpose(s: Tensor, weight: Tensor) -> Tensor:
    """Transpose of the linear map with the same weight: (N, out) @ (out, in) -> (N, in)."""
    return s @ weight
