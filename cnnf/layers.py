"""Thin nn.Module wrappers around cnnf.functional, and the Stage interface.

A CNN-F is a chain of stages between feedback levels. Each stage runs its
part of the forward pass given the top-down signals stored for its gates,
and the matching part of the feedback pass given the masks its latest
forward produced. All per-iteration state travels in return values.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf import functional as CF

# Weight initialisations (`ModelConfig.init`):
#   reference: the authors' code (cnnf/layers.py there): convolutions He-normal
#       with std sqrt(2 / (k * k * C_out)), FC weights PyTorch's default
#       (kaiming-uniform, bound 1 / sqrt(fan_in)), FC biases 0;
#   torch: PyTorch's default for nn.Conv2d / nn.Linear: kaiming-uniform weights
#       (bound 1 / sqrt(fan_in)) and uniform FC biases in the same bound.
# The instance-norm biases start at 0 under both (Appendix A.4).
INITS = ("reference", "torch")


def check_init(scheme: str) -> None:
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")


class TiedConv2d(nn.Module):
    """Bias-free conv whose feedback is the transposed conv with the same weight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, scheme: str = "reference") -> None:
        check_init(scheme)
        if scheme == "reference":  # He-normal over the fan-out, as the reference
            out_channels, _, kh, kw = self.weight.shape
            self.weight.normal_(0.0, math.sqrt(2.0 / (kh * kw * out_channels)))
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding)

    def feedback(self, s: Tensor, output_size: tuple[int, int]) -> Tensor:
        return CF.tied_conv_transpose(s, self.weight, self.stride, self.padding, output_size)


class TiedLinear(nn.Module):
    """Linear layer whose feedback is z @ W with the same W (bias is forward-only).

    One parameter serves both directions, so weight decay applies to it once
    (the reference ties through `.data` and in effect doubles it). For a
    like-for-like reproduction `untie_fc_feedback` gives the feedback its own
    leaf tensor on the same storage, as the reference does (see there).
    """

    feedback_weight: Optional[Tensor] = None  # set by untie_fc_feedback

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, scheme: str = "reference") -> None:
        check_init(scheme)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # PyTorch's default under both
        if scheme == "reference":
            self.bias.zero_()
        else:
            bound = 1 / math.sqrt(self.weight.shape[1])
            self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def feedback(self, s: Tensor) -> Tensor:
        return CF.tied_linear_transpose(s, self.weight if self.feedback_weight is None else self.feedback_weight)


def untie_fc_feedback(model: nn.Module) -> list[Tensor]:
    """The reference's FC tying (`train.fc_weight_decay: reference`).

    The reference keeps FC^T as a second parameter whose `.data` is a view of
    the forward weight, so both receive optimizer steps on one storage: the
    feedback's gradient goes to the second parameter, weight decay applies to
    both (twice on the shared values), gradient clipping counts the two
    gradients separately (|g_fwd|^2 + |g_fb|^2 instead of |g_fwd + g_fb|^2), and
    Adam keeps separate moments. Here each TiedLinear's feedback gets a leaf
    tensor on the weight's storage (untransposed: every optimizer in torch is
    elementwise, so the transposition changes nothing); pass the returned
    tensors to the optimizer and the gradient clip with the parameters. They
    are not parameters: state dicts are unchanged. `retie_fc_feedback` undoes it.
    """
    aliases = []
    for module in model.modules():
        if isinstance(module, TiedLinear):
            if module.feedback_weight is None:
                module.feedback_weight = module.weight.detach().requires_grad_(True)
            aliases.append(module.feedback_weight)
    return aliases


def fc_feedback_aliases(model: nn.Module) -> list[Tensor]:
    """The feedback tensors `untie_fc_feedback` created (empty when tied)."""
    return [m.feedback_weight for m in model.modules() if isinstance(m, TiedLinear) and m.feedback_weight is not None]


def retie_fc_feedback(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, TiedLinear):
            module.feedback_weight = None


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Re-draws every tied conv and FC of `model` with `scheme` (see INITS), in
    module order, and zeroes the instance-norm biases; returns the model."""
    check_init(scheme)
    for module in model.modules():
        if isinstance(module, (TiedConv2d, TiedLinear)):
            module.reset_parameters(scheme)
        elif isinstance(module, InstanceNormBias):
            with torch.no_grad():
                module.bias.zero_()
    return model


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
