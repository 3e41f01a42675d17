"""The model registry: `register_model`, `create_model`, `model_names`."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from cnnf.models.base import FeedbackNet
from cnnf.registry import Entry, Registry

MODELS: Registry[FeedbackNet] = Registry("model")


def register_model(
    name: str,
    *,
    legal_inds: tuple[int, ...],
    feedback: bool,
    input_shape: tuple[int, int, int],
    n_levels: int,
    recon_levels: tuple[int, ...] = (),
) -> Callable:
    """Register a FeedbackNet factory(ind, step_size, in_channels, n_classes, recon_levels).

    legal_inds: the feedback levels the architecture accepts.
    feedback: False for a plain CNN of the same backbone (0 iterations only).
    input_shape: (C, H, W) the architecture expects.
    n_levels: the number of stages; level k is the input of stage k, so
        levels 0..n_levels - 1 exist (the logits are not a level).
    recon_levels: the intermediate levels that carry reconstruction losses by
        default (those above `ind`); the factory's recon_levels overrides them.
    """
    return MODELS.register(
        name, legal_inds=legal_inds, feedback=feedback, input_shape=input_shape, n_levels=n_levels, recon_levels=recon_levels
    )



def model_entry(name: str) -> Entry[FeedbackNet]:
    return MODELS.get(name)


def create_model(name: str, init: str = "reference", **kwargs: Any) -> FeedbackNet:
    """The registered model `name` built with kwargs and initialised with
    `init` ("reference": the authors' He-normal convolutions and zero FC
    biases, which the layers draw when built; "torch": PyTorch's defaults)."""
    from cnnf.layers import check_init, initialize

    check_init(init)  # before building: an unknown scheme builds nothing
    net = MODELS.create(name, **kwargs)
    return net if init == "reference" else initialize(net, init)


def model_names() -> list[str]:
    return MODELS.names()


def resolve_recon_levels(requested: Optional[Sequence[int]], default: Sequence[int], ind: int) -> tuple[int, ...]:
    """The intermediate reconstruction levels a factory builds with.

    None takes the architecture's default, keeping the levels above `ind`
    (below it the feedback never runs); an explicit request is taken as given
    and FeedbackNet rejects a level at or below `ind`.
    """
    return tuple(k for k in default if k > ind) if requested is None else tuple(requested)
