"""Fashion-MNIST standard-training CNN-F (paper Appendix B.1).

Conv(32, 3x3) IN AdaReLU, Conv(64, 3x3) IN AdaReLU, AdaPool 2x2, FC(128)
AdaReLU, FC(10). The convolutions are unpadded (28 -> 26 -> 24 -> pool 12,
so FC 9216 -> 128), the layout of the classic PyTorch MNIST network that the
paper's layer list matches; ~1.2M parameters.

Feedback levels (`ind`): 0 = image, 1 = after relu1, 2 = after relu2.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from cnnf import functional as CF
from cnnf.layers import InstanceNormBias, Stage, TiedConv2d, TiedLinear
from cnnf.models.base import FeedbackNet
from cnnf.models.registry import register_model


class ConvRecord(NamedTuple):
    mask: Tensor  # AdaReLU mask of this forward, (N, C_out, H', W')
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
        z, mask = CF.ada_relu(self.norm(self.conv(x)), signals, eta)
        return z, ConvRecord(mask, (x.shape[-2], x.shape[-1]))

    def feedback(self, s: Tensor, record: ConvRecord, final: bool) -> tuple[Tensor, Tensor]:
        v = self.conv.feedback(CF.ada_relu_feedback(s, record.mask), record.input_size)
        if not final:
            v = CF.l2_instance_norm(v)
        return v, s  # s is stored as this AdaReLU's g


class PoolFCRecord(NamedTuple):
    pool: CF.PoolSelection
    mask: Tensor  # AdaReLU mask after the FC, (N, out_features)
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
        z, mask = CF.ada_relu(self.fc(p.flatten(1)), g_relu, eta)
        return z, PoolFCRecord(selection, mask, (x.shape[-2], x.shape[-1]))

    def feedback(self, s: Tensor, record: PoolFCRecord, final: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        v = self.fc.feedback(CF.ada_relu_feedback(s, record.mask))
        v = CF.l2_instance_norm(v.view(-1, *self.shape))
        return CF.ada_pool_feedback(v, record.pool, record.input_size), (v, s)


class LinearStage(Stage):
    """Final FC to the logits; no gate, so nothing is stored."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = TiedLinear(in_features, out_features)

    def forward(self, x: Tensor, signals: None, eta: float) -> tuple[Tensor, None]:
        return self.fc(x), None

    def feedback(self, s: Tensor, record: None, final: bool) -> tuple[Tensor, None]:
        return self.fc.feedback(s), None


def _fmnist_standard(ind: int, step_size: float, in_channels: int, n_classes: int, legal_inds: tuple[int, ...]) -> FeedbackNet:
    stages = [
        ConvStage(in_channels, 32, 3, padding=0),  # level 0 -> 1, 28 -> 26
        ConvStage(32, 64, 3, padding=0),  # level 1 -> 2, 26 -> 24
        PoolFCStage(64, 12, 128),  # level 2 -> 3, 24 -> 12 -> 128
        LinearStage(128, n_classes),  # level 3 -> logits
    ]
    return FeedbackNet(stages, ind=ind, step_size=step_size, legal_inds=legal_inds)


@register_model("cnnf_fmnist_std", legal_inds=(0, 1, 2), feedback=True, input_shape=(1, 28, 28))
def cnnf_fmnist_std(ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10) -> FeedbackNet:
    """The B.1 CNN-F; the paper trains it with pixel-level reconstruction (ind 0)."""
    return _fmnist_standard(ind, step_size, in_channels, n_classes, (0, 1, 2))


@register_model("cnn_fmnist_std", legal_inds=(0,), feedback=False, input_shape=(1, 28, 28))
def cnn_fmnist_std(ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10) -> FeedbackNet:
    """The same backbone as a plain CNN: always run with 0 feedback iterations."""
    return _fmnist_standard(ind, step_size, in_channels, n_classes, (0,))
