"""A small MNIST CNN-F and its plain CNN, the workload of feedback learning.

The B.1 layout with a quarter of the width: Conv(8, 3x3) IN AdaReLU,
Conv(16, 3x3) IN AdaReLU, AdaPool 2x2, FC(64) AdaReLU, FC(10); unpadded
(28 -> 26 -> 24 -> pool 12, so FC 2304 -> 64); ~150k parameters and
~0.86M MACs per image and forward pass, 22x fewer than B.1.

The feedback-learning boundary search runs about 39,000 forward passes per
MNIST sample, so its cost is this model's inference throughput (fl-spec
"Cost"); the paper does not give its MNIST architecture. Feedback levels as
in B.1: 0 = image, 1 = after relu1, 2 = after relu2.
"""

from __future__ import annotations

from typing import Optional, Sequence

from cnnf.models.base import FeedbackNet
from cnnf.models.fmnist import ConvStage, LinearStage, PoolFCStage
from cnnf.models.registry import register_model, resolve_recon_levels


def _mnist_small(
    ind: int, step_size: float, in_channels: int, n_classes: int, legal_inds: tuple[int, ...], recon_levels: Sequence[int]
) -> FeedbackNet:
    stages = [
        ConvStage(in_channels, 8, 3, padding=0),  # level 0 -> 1, 28 -> 26
        ConvStage(8, 16, 3, padding=0),  # level 1 -> 2, 26 -> 24
        PoolFCStage(16, 12, 64),  # level 2 -> 3, 24 -> 12 -> 64
        LinearStage(64, n_classes),  # level 3 -> logits
    ]
    return FeedbackNet(stages, ind=ind, step_size=step_size, legal_inds=legal_inds, recon_levels=recon_levels)


@register_model("cnnf_mnist_small", legal_inds=(0, 1, 2), feedback=True, input_shape=(1, 28, 28), n_levels=4, recon_levels=())
def cnnf_mnist_small(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The small CNN-F (pixel-level reconstruction by default)."""
    return _mnist_small(ind, step_size, in_channels, n_classes, (0, 1, 2), resolve_recon_levels(recon_levels, (), ind))


@register_model("cnn_mnist_small", legal_inds=(0,), feedback=False, input_shape=(1, 28, 28), n_levels=4, recon_levels=())
def cnn_mnist_small(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The same backbone as a plain CNN (0 feedback iterations)."""
    return _mnist_small(ind, step_size, in_channels, n_classes, (0,), ())
