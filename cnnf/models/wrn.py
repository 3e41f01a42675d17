"""CIFAR-10 WRN-40-2 CNN-F with feedback through residual blocks (paper A.5, Fig. 8).

Pre-activation WideResNet, depth 40 (6 basic blocks per group), widen factor
2: widths 16 / 32 / 64 / 128, group strides 1 / 2 / 2. Every BatchNorm is an
L2 instance norm plus bias (Appendix A.4); the head is IN-bias-AdaReLU,
avgpool 8, FC. ~2.24M parameters, ~328M MACs per image and forward pass.

Feedback levels (`ind`): 0 = image, k in 1..6 = output of block k of group 1
(groups 2 and 3 always run in full, cnnf-spec "Inference"). Levels 7 and 8
are the outputs of groups 2 and 3; with level 6 (group 1) they carry the
intermediate reconstruction losses ("after each of the 3 groups").
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from cnnf import functional as CF
from cnnf.catalog import model_info
from cnnf.layers import InstanceNormBias, Stage, TiedConv2d, TiedLinear
from cnnf.models.base import FeedbackNet
from cnnf.models.registry import register_model, resolve_recon_levels

WIDTHS = (16, 32, 64, 128)  # stem, group 1, 2, 3 of WRN-40-2
BLOCKS_PER_GROUP = 6  # (depth 40 - 4) / 6


class BlockRecord(NamedTuple):
    gate1: Tensor  # AdaReLU gate of relu1 (pre-activation of the block input)
    gate2: Tensor  # AdaReLU gate of relu2 (between the two convs)
    input_size: tuple[int, int]
    mid_size: tuple[int, int]


def _size(x: Tensor) -> tuple[int, int]:
    return (x.shape[-2], x.shape[-1])


class PreActBlock(nn.Module):
    """Pre-activation basic block: IN-AdaReLU-conv1-IN-AdaReLU-conv2 + shortcut.

    A projection block (width or stride changes) takes its shortcut as a 1x1
    conv of the relu1 output; an identity block adds its input.
    Feedback (cnnf-spec "Residual block feedback"):
      u = IN(conv2^T(s)); u = relu2.feedback(u); v = IN(conv1^T(u))
      projection: v += conv_sc^T(s) (no IN), then relu1.feedback(v)
      identity:   relu1.feedback(v) + s
    Signals: (g of relu1, g of relu2), each the incoming signal before masking.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.norm1 = InstanceNormBias(in_planes)
        self.conv1 = TiedConv2d(in_planes, out_planes, 3, stride=stride, padding=1)
        self.norm2 = InstanceNormBias(out_planes)
        self.conv2 = TiedConv2d(out_planes, out_planes, 3, padding=1)
        self.shortcut = TiedConv2d(in_planes, out_planes, 1, stride=stride) if (in_planes != out_planes or stride != 1) else None

    def forward(self, x: Tensor, signals: tuple[Tensor, Tensor] | None, eta: float) -> tuple[Tensor, BlockRecord]:
        g1, g2 = signals if signals is not None else (None, None)
        a, gate1 = CF.norm_ada_relu(x, self.norm1.bias, g1, eta)
        y = self.conv1(a)  # (N, out, H / stride, W / stride)
        b, gate2 = CF.norm_ada_relu(y, self.norm2.bias, g2, eta)
        z = self.conv2(b)
        shortcut = x if self.shortcut is None else self.shortcut(a)
        return z + shortcut, BlockRecord(gate1, gate2, _size(x), _size(y))

    def feedback(self, s: Tensor, record: BlockRecord) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        u = CF.l2_instance_norm(self.conv2.feedback(s, record.mid_size))
        g2 = u
        v = CF.l2_instance_norm(self.conv1.feedback(CF.ada_relu_feedback(u, record.gate2), record.input_size))
        if self.shortcut is not None:
            v = v + self.shortcut.feedback(s, record.input_size)
            return CF.ada_relu_feedback(v, record.gate1), (v, g2)
        return CF.ada_relu_feedback(v, record.gate1) + s, (v, g2)


class BlocksStage(Stage):
    """A run of pre-activation blocks, optionally after the stem conv.

    With the stem (the first stage: image -> output of block 1) the feedback
    ends with stem^T, the pixel reconstruction, which gets no instance norm.
    """

    def __init__(self, blocks: Sequence[PreActBlock], stem: Optional[TiedConv2d] = None):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, signals: tuple | None, eta: float) -> tuple[Tensor, tuple]:
        records = []
        h = x if self.stem is None else self.stem(x)
        for j, block in enumerate(self.blocks):
            h, rec = block(h, None if signals is None else signals[j], eta)
            records.append(rec)
        return h, (tuple(records), _size(x))

    def feedback(self, s: Tensor, record: tuple, final: bool) -> tuple[Tensor, tuple]:
        records, input_size = record
        signals: list = [None] * len(self.blocks)
        for j in reversed(range(len(self.blocks))):
            s, signals[j] = self.blocks[j].feedback(s, records[j])
        if self.stem is not None:
            s = self.stem.feedback(s, input_size)
        return s, tuple(signals)


class HeadRecord(NamedTuple):
    gate: Tensor  # gate of the head AdaReLU, (N, C, 8, 8)
    spatial: tuple[int, int]


class HeadStage(Stage):
    """IN + bias -> AdaReLU -> global avgpool -> FC.

    Feedback: fc^T, reshape to (C, 1, 1), nearest upsample to the pooled
    size (x8), IN, then the AdaReLU mask; the IN output is the gate's g.
    """

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.norm = InstanceNormBias(channels)
        self.fc = TiedLinear(channels, n_classes)

    def forward(self, x: Tensor, signals: Tensor | None, eta: float) -> tuple[Tensor, HeadRecord]:
        a, gate = CF.norm_ada_relu(x, self.norm.bias, signals, eta)
        return self.fc(a.mean(dim=(-2, -1))), HeadRecord(gate, _size(x))

    def feedback(self, s: Tensor, record: HeadRecord, final: bool) -> tuple[Tensor, Tensor]:
        v = self.fc.feedback(s)[:, :, None, None]  # (N, C, 1, 1)
        v = CF.l2_instance_norm(F.interpolate(v, size=record.spatial, mode="nearest"))
        return CF.ada_relu_feedback(v, record.gate), v


def _group(in_planes: int, out_planes: int, stride: int) -> list[PreActBlock]:
    return [PreActBlock(in_planes if j == 0 else out_planes, out_planes, stride if j == 0 else 1) for j in range(BLOCKS_PER_GROUP)]


def _wrn(ind: int, step_size: float, in_channels: int, n_classes: int, legal_inds: tuple[int, ...], recon_levels: Sequence[int]) -> FeedbackNet:
    w0, w1, w2, w3 = WIDTHS
    group1 = _group(w0, w1, 1)
    stages: list[Stage] = [BlocksStage(group1[:1], stem=TiedConv2d(in_channels, w0, 3, padding=1))]  # level 0 -> 1
    stages += [BlocksStage([block]) for block in group1[1:]]  # levels 1..5 -> 2..6, (32, 32, 32)
    stages += [
        BlocksStage(_group(w1, w2, 2)),  # level 6 -> 7, (64, 16, 16)
        BlocksStage(_group(w2, w3, 2)),  # level 7 -> 8, (128, 8, 8)
        HeadStage(w3, n_classes),  # level 8 -> logits
    ]
    return FeedbackNet(stages, ind=ind, step_size=step_size, legal_inds=legal_inds, recon_levels=recon_levels)


# legal inds 0..6, default recon levels: the outputs of the three groups (6, 7, 8)
WRN, PLAIN_WRN = model_info("cnnf_wrn40_2"), model_info("cnn_wrn40_2")


@register_model(WRN.name)
def cnnf_wrn40_2(
    ind: int = 5, step_size: float = 0.1, in_channels: int = 3, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The CIFAR-10 CNN-F (released setting ind 5, T 2, cc 0.05)."""
    return _wrn(ind, step_size, in_channels, n_classes, WRN.legal_inds, resolve_recon_levels(recon_levels, WRN.recon_levels, ind))


@register_model(PLAIN_WRN.name)
def cnn_wrn40_2(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 3, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """WRN-40-2 with IN + bias as a plain CNN (the CNN column of Table 3)."""
    return _wrn(ind, step_size, in_channels, n_classes, PLAIN_WRN.legal_inds, PLAIN_WRN.recon_levels)
