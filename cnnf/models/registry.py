"""The model registry: `register_model`, `create_model`, `model_names`."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from cnnf.catalog import ModelInfo, model_info
from cnnf.models.base import FeedbackNet
from cnnf.registry import Entry, Registry

MODELS: Registry[FeedbackNet] = Registry("model")


def register_model(name: str) -> Callable:
    """Register a FeedbackNet factory(ind, step_size, in_channels, n_classes, recon_levels).

    The model's metadata (legal inds, feedback, input shape, levels, default
    reconstruction levels) is its `cnnf.catalog.ModelInfo`, the entry's `meta`;
    a name the catalog does not describe cannot be registered, and
    `create_model` checks the built net against the record.
    """
    return MODELS.register(name, model_info(name))


def model_entry(name: str) -> Entry[FeedbackNet]:
    """The registered factory; `.meta` is the model's `cnnf.catalog.ModelInfo`."""
    return MODELS.get(name)


def create_model(name: str, init: str = "reference", **kwargs: Any) -> FeedbackNet:
    """The registered model `name` built with kwargs and initialised with
    `init` ("reference": the authors' He-normal convolutions and zero FC
    biases, which the layers draw when built; "torch": PyTorch's defaults)."""
    from cnnf.layers import check_init, initialize

    check_init(init)  # before building: an unknown scheme builds nothing
    entry = MODELS.get(name)
    net = entry.factory(**kwargs)
    _check_against_catalog(net, entry.meta)
    return net if init == "reference" else initialize(net, init)


def _check_against_catalog(net: FeedbackNet, info: ModelInfo) -> None:
    if len(net.stages) != info.n_levels:
        raise RuntimeError(f"model {info.name!r} built {len(net.stages)} levels but cnnf.catalog describes {info.n_levels}")


def model_names() -> list[str]:
    return MODELS.names()


def resolve_recon_levels(requested: Optional[Sequence[int]], default: Sequence[int], ind: int) -> tuple[int, ...]:
    """The intermediate reconstruction levels a factory builds with.

    None takes the architecture's default, keeping the levels above `ind`
    (below it the feedback never runs); an explicit request is taken as given
    and FeedbackNet rejects a level at or below `ind`.
    """
    return tuple(k for k in default if k > ind) if requested is None else tuple(requested)
