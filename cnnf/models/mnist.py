"""A small MNIST CNN-F and its plain CNN, the workload of feedback learning.

The B.1 layout with a quarter of the width: Conv(8, 3x3) IN AdaReLU,
Conv(16, 3x3) IN, AdaPool 2x2, FC(64) AdaReLU, FC(10); unpadded
(28 -> 26 -> 24 -> pool 12, so FC 2304 -> 64); ~150k parameters and
~0.86M MACs per image and forward pass, 22x fewer than B.1.

The feedback-learning boundary search runs about 39,000 forward passes per
MNIST sample, so its cost is this model's inference throughput (fl-spec
"Cost"); the paper does not give its MNIST architecture. Feedback levels as
in B.1: 0 = image, 1 = after relu1, 2 = the AdaPool's input (the second
IN + bias output).
"""

from __future__ import annotations

from typing import Optional, Sequence

from cnnf.catalog import model_info
from cnnf.models.base import FeedbackNet
from cnnf.models.fmnist import standard_backbone
from cnnf.models.registry import register_model, resolve_recon_levels

WIDTHS = (8, 16, 64)  # conv1, conv2, FC: B.1's (32, 64, 128) narrowed


SMALL, PLAIN_SMALL = model_info("cnnf_mnist_small"), model_info("cnn_mnist_small")  # legal inds, default recon levels


@register_model(SMALL.name)
def cnnf_mnist_small(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The small CNN-F (pixel-level reconstruction by default)."""
    return standard_backbone(
        ind, step_size, in_channels, n_classes, SMALL.legal_inds, resolve_recon_levels(recon_levels, SMALL.recon_levels, ind), WIDTHS
    )


@register_model(PLAIN_SMALL.name)
def cnn_mnist_small(
    ind: int = 0, step_size: float = 0.1, in_channels: int = 1, n_classes: int = 10, recon_levels: Optional[Sequence[int]] = None
) -> FeedbackNet:
    """The same backbone as a plain CNN (0 feedback iterations)."""
    return standard_backbone(ind, step_size, in_channels, n_classes, PLAIN_SMALL.legal_inds, PLAIN_SMALL.recon_levels, WIDTHS)
