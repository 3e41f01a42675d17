"""CNN-F math as pure functions (house style 3).

Every function takes tensors and returns tensors (plus the masks or indices
the feedback pass needs); nothing is stored on a module. References are to
Huang et al. 2020 ("Neural Networks with Recurrent Generative Feedback") and
to ../shared/docs/cnnf-spec.md.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

IN_EPS = 1e-8


def l2_instance_norm(x: Tensor, eps: float = IN_EPS) -> Tensor:
    """Appendix A.4: x / sqrt(mean_HW(x^2) + eps) per sample and channel.

    No mean subtraction and no learnable scale, so the map is positively
    homogeneous and sign-preserving, which the AdaReLU gates rely on.
    x: (N, C, H, W).
    """
    return x * torch.rsqrt(x.pow(2).mean(dim=(-2, -1), keepdim=True) + eps)


def ada_relu(f: Tensor, g: Tensor | None, eta: float) -> tuple[Tensor, Tensor]:
    """AdaReLU forward (Sec. 3.2, online update of Algorithm 1).

    First pass (g is None): plain ReLU. Later passes: the pre-activation is
    first moved toward the stored feedback, f' = f + eta (g - f), and the unit
    is active where f' and g have the same sign, so where g < 0 negative
    values pass. Returns (f' * mask, mask); the mask gates the next feedback.
    """
    if g is None:
        mask = f > 0
        return f * mask, mask
    f = f + eta * (g - f)
    mask = torch.sign(f) * torch.sign(g) > 0  # sign test: f * g can underflow
    return f * mask, mask


def ada_relu_feedback(s: Tensor, mask: Tensor) -> Tensor:
    """AdaReLU feedback: the top-down signal masked by the latest forward mask."""
    return s * mask


class PoolSelection(NamedTuple):
    """Which input position each pooled unit took in the latest forward pass.

    index: (N, C, h, w) flat index into the (H, W) plane, as max_pool2d gives.
    active: (N, C, h, w) bool; False where the unit output 0 (feedback exactly 0).
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
    out = torch.where(positive, top, torch.where(negative, -neg_bottom, torch.zeros_like(top)))
    index = torch.where(negative, bottom_index, top_index)
    return out, PoolSelection(index, positive | negative)


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
