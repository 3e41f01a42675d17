"""The two Fashion-MNIST CNN-Fs of the paper and their plain CNNs.

Standard training (Appendix B.1): Conv(32, 3x3) IN AdaReLU, Conv(64, 3x3)
IN AdaPool 2x2, FC(128) AdaReLU, FC(10). After the second convolution the
AdaPool is the nonlinearity: there is no AdaReLU between its instance norm
and the pool (cnnf-spec "Architectures"). The convolutions are unpadded
(28 -> 26 -> 24 -> pool 12, so FC 9216 -> 128), the layout of the classic
PyTorch MNIST network that the paper's layer list matches; ~1.2M
parameters.

Adversarial training (Appendix B.2, the released model): Conv 1->16,
16->32, 32->32 (3x3, pad 1, IN, bias, AdaReLU), AdaPool, Conv 32->64 (IN,
bias, AdaReLU), AdaPool, FC 3136->1000 AdaReLU, FC 128 AdaReLU, FC 10;
~3.3M parameters, ~17.8M MACs per image and forward pass.

Feedback levels (`ind`): 0 = image, 1 = after relu1, 2 = after relu2 (B.2)
or, in B.1, the AdaPool's input (the second IN + bias output; B.1 has no
relu2). In both models level 2 is the map the second convolution block hands
upward. The B.2 model also carries reconstruction losses at levels 3 and 4,
the AdaReLU outputs before the two AdaPools (cnnf-spec "Architectures").
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from cnnf import functional as CF
from cnnf.catalog import model_info
from cnnf.layers import InstanceNormBias, Stage, TiedConv2d, TiedLinear
from cnnf.models.base import FeedbackNet
from cnnf.models.registry import register_model, resolve_recon_levels


class ConvRecord(NamedTuple):
    gate: Tensor  # AdaReLU gate z of this forward (active where z > 0), (N, C_out, H', W')
    input_size: tuple[int, int]


class ConvStage(Stage):
    """conv -> IN + bias -> AdaReLU; feedback: mask -> conv^T [-> IN].

    The instance norm follows the transposed conv everywhere except on the
    final reconstruction, the one returned at level `ind` (cnnf-spec "Layers").
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = TiedConv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm = InstanceNormBias(out_channels)

    def forward(self, x: Tensor, signals: Tensor | None, eta: float) -> tuple[Tensor, ConvRecord]:
        z, gate = CF.norm_ada_relu(self.conv(x), self.norm.bias, signals, eta)
        return z, ConvRecord(gate, (x.shape[-2], x.shape[-1]))

    def feedback(self, s: Tensor, record: ConvRecord, final: bool) -> tuple[Tensor, Tensor]:
        v = self.conv.feedback(CF.ada_relu_feedback(s, record.gate), record.input_size)
        if not final:
            v = CF.l2_instance_norm(v)
        return v, s  # s is stored as this AdaReLU's g

    def gate(self, s: Tensor, record: ConvRecord) -> Tensor:
        return CF.ada_relu_feedback(s, record.gate)


class ConvNormStage(Stage):
    """conv -> IN + bias, no gate (B.1's second convolution: the AdaPool of
    the next stage is its nonlinearity); feedback: conv^T [-> IN]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = TiedConv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm = InstanceNormBias(out_channels)

    def forward(self, x: Tensor, signals: None, eta: float) -> tuple[Tensor, tuple[int, int]]:
        return self.norm(self.conv(x)), (x.shape[-2], x.shape[-1])

    def feedback(self, s: Tensor, record: tuple[int, int], final: bool) -> tuple[Tensor, None]:
        v = self.conv.feedback(s, record)
        return (v if final else CF.l2_instance_norm(v)), None


class PoolConvRecord(NamedTuple):
    pool: CF.PoolSelection
    gate: Tensor  # AdaReLU gate after the conv, (N, C_out, H/2, W/2)
    input_size: tuple[int, int]
    pooled_size: tuple[int, int]


class PoolConvStage(Stage):
    """AdaPool 2x2 -> conv -> IN + bias -> AdaReLU (conv4 of the B.2 model).

    Feedback: mask -> conv^T -> IN -> unpool. The IN output is also the
    AdaPool's g. Signals: (g at the pool output, g at the AdaReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int):
        super().__init__()
        self.conv = TiedConv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm = InstanceNormBias(out_channels)

    def forward(self, x: Tensor, signals: tuple[Tensor, Tensor] | None, eta: float) -> tuple[Tensor, PoolConvRecord]:
        g_pool, g_relu = signals if signals is not None else (None, None)
        p, selection = CF.ada_pool(x, g_pool)  # (N, C, H/2, W/2)
        z, gate = CF.norm_ada_relu(self.conv(p), self.norm.bias, g_relu, eta)
        return z, PoolConvRecord(selection, gate, (x.shape[-2], x.shape[-1]), (p.shape[-2], p.shape[-1]))

    def feedback(self, s: Tensor, record: PoolConvRecord, final: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        v = CF.l2_instance_norm(self.conv.feedback(CF.ada_relu_feedback(s, record.gate), record.pooled_size))
        return CF.ada_pool_feedback(v, record.pool, record.input_size), (v, s)

    def gate(self, s: Tensor, record: PoolConvRecord) -> Tensor:
        return CF.ada_relu_feedback(s, record.gate)


class PoolFCRecord(NamedTuple):
    pool: CF.PoolSelection
    gate: Tensor  # AdaReLU gate after the FC, (N, out_features)
    input_size: tuple[int, int]


class PoolFCStage(Stage):
    """AdaPool 2x2 -> flatten -> FC -> AdaReLU.

    Feedback: mask -> FC^T -> reshape to a feature map -> IN (the first FC^T
    that becomes a feature map) -> unpool. The IN comes before the unpool and
    its output is also the AdaPool's g, so it stays when the stage is final.
    Signals: (g at the pool output, g at the AdaReLU).
    """

    def __init__(self, channels: int, pooled_size: int, out_features: int):
        super().__init__()
        self.shape = (channels, pooled_size, pooled_size)
        self.fc = TiedLinear(channels * pooled_size * pooled_size, out_features)

    def forward(self, x: Tensor, signals: tuple[Tensor, Tensor] | None, eta: float) -> tuple[Tensor, PoolFCRecord]:
        g_pool, g_relu = signals if signals is not None else (None, None)
        p, selection = CF.ada_pool(x, g_pool)  # (N, C, H/2, W/2)
        z, gate = CF.ada_relu(self.fc(CF.channels_last_grad(p).flatten(1)), g_relu, eta)
        return z, PoolFCRecord(selection, gate, (x.shape[-2], x.shape[-1]))

    def feedback(self, s: Tensor, record: PoolFCRecord, final: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        v = self.fc.feedback(CF.ada_relu_feedback(s, record.gate))
        # channels-last like the forward maps, so that elementwise ops never mix layouts
        v = CF.l2_instance_norm(v.view(-1, *self.shape).contiguous(memory_format=torch.channels_last))
        return CF.ada_pool_feedback(v, record.pool, record.input_size), (v, s)

    def gate(self, s: Tensor, record: PoolFCRecord) -> Tensor:
        return CF.ada_relu_feedback(s, record.gate)


class FCStage(Stage):
    """FC -> AdaReLU; feedback: mask -> FC^T (no IN between FC layers)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = TiedLinear(in_features, out_features)

    def forward(self, x: Tensor, signals: Tensor | None, eta: float) -> tuple[Tensor, Tensor]:
        return CF.ada_relu(self.fc(x), signals, eta)

    def feedback(self, s: Tensor, record: Tensor, final: bool) -> tuple[Tensor, Tensor]:
        return self.fc.feedback(CF.ada_relu_feedback(s, record)), s

    def gate(self, s: Tensor, record: Tensor) -> Tensor:
        return CF.ada_relu_feedback(s, record)


class LinearStage(Stage):
    """Final FC to the logits; no gate, so nothing is stored."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = TiedLinear(in_features, out_features)

    def forward(self, x: Tensor, signals: None, eta: float) -> tuple[Tensor, None]:
        return self.fc(x), None

    def feedback(self, s: Tensor, record: None, final: bool) -> tuple[Tensor, None]:
        return self.fc.feedback(s), None


def standard_backbone(
    ind: int, step_size: float, in_channels: int, n_classes: int, legal_inds: tuple[int, ...], recon_levels: Sequence[int],
    widths: tuple[int, int, int] = (32, 64, 128),
) -> FeedbackNet:
    """The B.1 layout; `widths` (conv1, conv2, FC) also builds narrower variants."""
    c1, c2, fc = widths
    stages = [
        ConvStage(in_channels, c1, 3, padding=0),  # level 0 -> 1, 28 -> 26
        ConvNormStage(c1, c2, 3, padding=0),  # level 1 -> 2, 26 -> 24, no AdaReLU: the AdaPool follows
        PoolFCStage(c2, 12, fc),  # level 2 -> 3, 24 -> 12 -> fc
        LinearStage(fc, n_classes),  # level 3 -> logits
    ]
    return FeedbackNet(stages, ind=ind, step_size=step_size, legal_inds=legal_inds, recon_levels=recon_levels)


STD, PLAIN_STD = model_info("cnnf_fmnist_std"), model_info("cnn_fmnist_std")  # legal inds, default recon levels


@register_model(STD.name)
def cnnf_fmnist_std(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The B.1 CNN-F; the paper trains it with pixel-level reconstruction (ind 0) only."""
    return standard_backbone(ind, step_size, in_channels, n_classes, STD.legal_inds, resolve_recon_levels(recon_levels, STD.recon_levels, ind))


@register_model(PLAIN_STD.name)
def cnn_fmnist_std(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The same backbone as a plain CNN: always run with 0 feedback iterations."""
    return standard_backbone(ind, step_size, in_channels, n_classes, PLAIN_STD.legal_inds, PLAIN_STD.recon_levels)


def _fmnist_adversarial(
    ind: int, step_size: float, in_channels: int, n_classes: int, legal_inds: tuple[int, ...], recon_levels: Sequence[int]
) -> FeedbackNet:
    stages = [
        ConvStage(in_channels, 16, 3, padding=1),  # level 0 -> 1, (16, 28, 28)
        ConvStage(16, 32, 3, padding=1),  # level 1 -> 2, (32, 28, 28)
        ConvStage(32, 32, 3, padding=1),  # level 2 -> 3, (32, 28, 28), before AdaPool 1
        PoolConvStage(32, 64, 3, padding=1),  # level 3 -> 4, 28 -> 14, (64, 14, 14), before AdaPool 2
        PoolFCStage(64, 7, 1000),  # level 4 -> 5, 14 -> 7, 3136 -> 1000
        FCStage(1000, 128),  # level 5 -> 6
        LinearStage(128, n_classes),  # level 6 -> logits
    ]
    return FeedbackNet(stages, ind=ind, step_size=step_size, legal_inds=legal_inds, recon_levels=recon_levels)


ADV, PLAIN_ADV = model_info("cnnf_fmnist_adv"), model_info("cnn_fmnist_adv")


@register_model(ADV.name)
def cnnf_fmnist_adv(
    ind: int = 2, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The B.2 CNN-F (released setting ind 2, T 1, cc 0.1), reconstructing at levels 3 and 4 too."""
    return _fmnist_adversarial(ind, step_size, in_channels, n_classes, ADV.legal_inds, resolve_recon_levels(recon_levels, ADV.recon_levels, ind))


@register_model(PLAIN_ADV.name)
def cnn_fmnist_adv(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The B.2 backbone as a plain CNN (the CNN column of Table 2)."""
    return _fmnist_adversarial(ind, step_size, in_channels, n_classes, PLAIN_ADV.legal_inds, PLAIN_ADV.recon_levels)
