"""Shared helpers for the cnnf tests: tiny inputs, seeded models, the sample data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import Tensor

from cnnf.config import DataConfig
from cnnf.data import DataSplits, load_splits
from cnnf.models import FeedbackNet, adversarial_cnnf_loss, create_model, model_entry

REPO = Path(__file__).resolve().parents[2]


def offline_data_root() -> Optional[Path]:
    """Where the offline torchvision datasets live, or None if nowhere.

    CI sets $CNNF_DATA_ROOT; on a workstation the shared folder next to the
    checkout is accepted too.
    """
    candidates = [os.environ.get("CNNF_DATA_ROOT"), "/work/shared/datasets", str(REPO.parent / "shared" / "datasets")]
    for c in candidates:
        if c and (Path(c) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return Path(c)
    return None


def images(n: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> Tensor:
    """n seeded images uniform in the model input range [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


def make_net(name: str, ind: int = 0, seed: int = 0, randomize_biases: bool = True) -> FeedbackNet:
    """A seeded model; biases randomised so that a zero-initialised bias cannot hide a bug."""
    torch.manual_seed(seed)
    net = create_model(name, ind=ind)
    if randomize_biases:
        with torch.no_grad():
            for pname, p in net.named_parameters():
                if pname.endswith("bias"):
                    p.uniform_(-0.3, 0.3)
    return net.eval()


def input_shape(name: str) -> tuple[int, int, int]:
    return tuple(model_entry(name).meta.input_shape)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def sample_splits() -> DataSplits:
    """The bundled fashion-mnist-sample with the default split (3600 / 400 / 1000)."""
    return load_splits(DataConfig(dataset="fashion-mnist-sample"))


@pytest.fixture(scope="session")
def trained_net(sample_splits: DataSplits) -> FeedbackNet:
    """The B.1 CNN-F (ind 0) after one epoch on 600 sample images (~4 s): ~0.7 clean
    accuracy, so attacks have correct predictions to break (a random net is
    fooled by any attack and makes accuracy comparisons vacuous)."""
    from cnnf.config import ExperimentConfig, TrainConfig
    from cnnf.train import fit

    cfg = ExperimentConfig(
        data=DataConfig(n_train=600),
        train=TrainConfig(epochs=1, batch_size=50, n_iterations=1, device="cpu", seed=0),
    )
    return fit(cfg, load_splits(cfg.data)).model.eval()


def b2_step_matches_eager(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """The B.2 CNN-F, one feedback iteration, clean + adversarial loss, run with
    the environment switch `env` (CNNF_FUSED_KERNELS) off and on: the loss and
    every parameter gradient must agree."""
    torch.manual_seed(0)
    net = create_model("cnnf_fmnist_adv", ind=2)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    y = torch.randint(0, 10, (4,))
    results = []
    for on in (False, True):
        monkeypatch.setenv(env, "1" if on else "0")
        net.zero_grad(set_to_none=True)
        loss, _, _ = adversarial_cnnf_loss(net.iterate(x, 1), y, 0.1, 1.0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
