"""Thin nn.Module wrappers around cnnf.functional, and the Stage interface.

A CNN-F is a chain of stages between feedback levels. Each stage runs its
part of the forward pass given the top-down signals stored for its gates,
and the matching part of the feedback pass given the masks its latest
forward produced. All per-iteration state travels in return values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf import functional as CF


class TiedConv2d(nn.Module):
    """Bias-free conv whose feedback is the transposed conv with the same weight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding)

    def feedback(self, s: Tensor, output_size: tuple[int, int]) -> Tensor:
        return CF.tied_conv_transpose(s, self.weight, self.stride, self.padding, output_size)


class TiedLinear(nn.Module):
    """Linear layer whose feedback is z @ W with the same W (bias is forward-only).

    One parameter serves both directions, so weight decay applies to it once
    (the reference ties through `.data` and in effect doubles it).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def feedback(self, s: Tensor) -> Tensor:
        return CF.tied_linear_transpose(s, self.weight)


class InstanceNormBias(nn.Module):
    """L2 instance norm (Appendix A.4) plus a per-channel bias initialised to 0.

    Replaces BatchNorm; the bias is identity in the feedback pass.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return CF.l2_instance_norm(x, bias=self.bias)


class Stage(nn.Module):
    """Part of the network between two feedback levels.

    forward(x, signals, eta) -> (y, record): `signals` holds the top-down
    signal g for each gate of the stage (None on the first pass); `record`
    is whatever the feedback needs from this forward (masks, pool indices).
    feedback(s, record, final) -> (s_below, signals): the transpose of the
    stage, returning the signals to store for the next forward. `final` is
    True when s_below is the reconstruction at level `ind` (the end of the
    feedback chain), which gets no instance norm (cnnf-spec "Layers").
    gate(s, record): a signal at this stage's output level masked by the
    stage's top gate, the form in which an intermediate reconstruction is
    compared with the stage's output features (identity when the output is
    not gated, e.g. a residual sum).
    """

    def forward(self, x: Tensor, signals: Any, eta: float) -> tuple[Tensor, Any]:  # pragma: no cover
        raise NotImplementedError

    def feedback(self, s: Tensor, record: Any, final: bool) -> tuple[Tensor, Any]:  # pragma: no cover
        raise NotImplementedError

    def gate(self, s: Tensor, record: Any) -> Tensor:
        return s
