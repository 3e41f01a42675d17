"""Shared fixtures for the attack tests: tiny seeded classifiers trained for
a few hundred steps on the bundled Fashion-MNIST sample (~2 s each), a test
batch, and fast settings for every registered attack."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnf.attacks import Attack, Predict, create_attack
from cnnf.data import DataSplits

# Fast settings per registered attack (budgets in [0, 1] pixel units). A new
# attack must be added here: test_every_attack_has_fast_settings checks it.
FAST: dict[str, dict[str, Any]] = {
    "fgsm": dict(eps_pixels=0.03),
    "pgd_linf": dict(eps_pixels=0.03, steps=5),
    "pgd_l2": dict(eps_pixels=0.5, steps=5),
    "bim": dict(eps_pixels=0.03, steps=5),
    "mim": dict(eps_pixels=0.03, steps=5),
    "cw_l2": dict(eps_pixels=0.5, steps=10, lr=0.05, binary_search_steps=2),
    "deepfool": dict(eps_pixels=0.5, steps=10),
    "spsa": dict(eps_pixels=0.03, steps=5, n_samples=16),
    "uniform_noise": dict(eps_pixels=0.1, draws=10),
    "gaussian_noise": dict(eps_pixels=0.1, draws=10),
    "transfer": dict(eps_pixels=0.03, steps=5),  # the source model is added by `build`
    "apgd_ce": dict(eps_pixels=0.03, steps=5),
    "apgd_dlr": dict(eps_pixels=0.03, steps=5),
    "apgd_t": dict(eps_pixels=0.03, steps=5, n_targets=2),
    "square": dict(eps_pixels=0.03, queries=20),
}


def tiny_cnn(splits: DataSplits, seed: int, n_steps: int = 300) -> nn.Module:
    """Two strided convolutions and a linear layer, Adam on random batches of
    the sample's training split: ~0.85 clean accuracy, and no defence."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        idx = torch.randint(0, len(splits.train), (64,), generator=g)
        loss = F.cross_entropy(net(splits.train.x[idx]), splits.train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return net.eval()


@pytest.fixture(scope="session")
def tiny_net(sample_splits: DataSplits) -> nn.Module:
    return tiny_cnn(sample_splits, seed=0)


@pytest.fixture(scope="session")
def other_net(sample_splits: DataSplits) -> nn.Module:
    """Trained like tiny_net from another seed: a transfer source."""
    return tiny_cnn(sample_splits, seed=1)


@pytest.fixture(scope="session")
def batch(sample_splits: DataSplits) -> tuple[Tensor, Tensor]:
    return sample_splits.test.x[:32], sample_splits.test.y[:32]


@pytest.fixture(scope="session")
def batch64(sample_splits: DataSplits) -> tuple[Tensor, Tensor]:
    return sample_splits.test.x[:64], sample_splits.test.y[:64]


def build(name: str, source: Predict | None = None, **overrides: Any) -> Attack:
    """The attack `name` with its FAST settings, updated by `overrides`."""
    kwargs = {**FAST[name], **overrides}
    if name == "transfer":
        kwargs.setdefault("source", source)
    return create_attack(name, **kwargs)


def correct(predict: Predict, x: Tensor, y: Tensor) -> Tensor:
    """Per-example correctness (bool, (N,))."""
    with torch.no_grad():
        return predict(x).argmax(1) == y


def accuracy(predict: Predict, x: Tensor, y: Tensor) -> float:
    return correct(predict, x, y).float().mean().item()
