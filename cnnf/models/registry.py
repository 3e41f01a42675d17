"""The model registry: `register_model`, `create_model`, `model_names`."""

from __future__ import annotations

from typing import Any, Callable

from cnnf.models.base import FeedbackNet
from cnnf.registry import Entry, Registry

MODELS: Registry[FeedbackNet] = Registry("model")


def register_model(name: str, *, legal_inds: tuple[int, ...], feedback: bool, input_shape: tuple[int, int, int]) -> Callable:
    """Register a FeedbackNet factory(ind, step_size, in_channels, n_classes).

    legal_inds: the feedback levels the architecture accepts.
    feedback: False for a plain CNN of the same backbone (0 iterations only).
    input_shape: (C, H, W) the architecture expects.
    """
    return MODELS.register(name, legal_inds=legal_inds, feedback=feedback, input_shape=input_shape)


def model_entry(name: str) -> Entry[FeedbackNet]:
    return MODELS.get(name)


def create_model(name: str, **kwargs: Any) -> FeedbackNet:
    return MODELS.create(name, **kwargs)


def model_names() -> list[str]:
    return MODELS.names()
