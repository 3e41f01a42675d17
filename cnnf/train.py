"""Standard training of a CNN-F (paper Appendix B.1), readable top to bottom.

Adam, cross-entropy at every iteration plus the reconstruction loss
(`cnnf_loss`), per-epoch metrics through an optional callback, seeded, and
resumable from a `TrainState` (model, optimizer, epoch, history).
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from cnnf.config import ExperimentConfig
from cnnf.data import ArrayDataset, DataSplits, dataset_info
from cnnf.models import FeedbackNet, InferenceModel, cnnf_loss, create_model


@dataclass(frozen=True)
class EpochResult:
    """Metrics of one finished epoch (accuracies in [0, 1])."""

    epoch: int
    train_loss: float
    train_ce: float
    train_recon: float
    train_acc: float  # of the last-iteration logits, on the fly
    val_acc: float  # full CNN-F with the evaluation iterations and prediction
    seconds: float
    images_per_s: float

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "epoch"}


@dataclass
class TrainState:
    """Everything needed to continue training after `epoch` finished epochs."""

    epoch: int
    model: dict
    optimizer: dict
    history: list[EpochResult] = field(default_factory=list)


def save_train_state(state: TrainState, path: str | Path) -> None:
    torch.save({"epoch": state.epoch, "model": state.model, "optimizer": state.optimizer,
                "history": [dataclasses.asdict(r) for r in state.history]}, path)


def load_train_state(path: str | Path) -> TrainState:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return TrainState(raw["epoch"], raw["model"], raw["optimizer"], [EpochResult(**r) for r in raw["history"]])


@dataclass(frozen=True)
class FitResult:
    model: FeedbackNet
    history: tuple[EpochResult, ...]
    device: torch.device


EpochCallback = Callable[[EpochResult, TrainState], None]


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first visible GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is visible to this process")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_model(cfg: ExperimentConfig) -> FeedbackNet:
    """An untrained model for cfg.model, sized for cfg.data's dataset."""
    return create_model(
        cfg.model.arch, ind=cfg.model.ind, step_size=cfg.model.step_size,
        in_channels=dataset_info(cfg.data.dataset).input_shape[0], n_classes=dataset_info(cfg.data.dataset).n_classes,
    )


@torch.no_grad()
def accuracy(predict: torch.nn.Module, data: ArrayDataset, batch_size: int = 512) -> float:
    """Share of examples whose argmax logit equals the label."""
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += (predict(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum().item()
    return correct / max(len(data), 1)


def fit(
    cfg: ExperimentConfig,
    splits: DataSplits,
    *,
    callback: Optional[EpochCallback] = None,
    resume: Optional[TrainState] = None,
) -> FitResult:
    """Train cfg.model on splits.train for cfg.train.epochs, validating each epoch."""
    tc = cfg.train
    device = resolve_device(tc.device)
    seed_everything(tc.seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    history: list[EpochResult] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        history, start_epoch = list(resume.history), resume.epoch

    train, val = splits.train.to(device), splits.val.to(device)
    scored = InferenceModel(model, cfg.eval_iterations, cfg.eval.prediction)
    for epoch in range(start_epoch + 1, tc.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        # The shuffle depends only on (seed, epoch), so a resumed run sees the same batches.
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(tc.seed * 100_003 + epoch)).to(device)
        sums = torch.zeros(4, device=device)  # loss, ce, recon, correct (summed over examples)
        for i in range(0, len(train), tc.batch_size):
            idx = order[i : i + tc.batch_size]
            x, y = train.x[idx], train.y[idx]
            out = model.iterate(x, tc.n_iterations)
            loss, ce, recon = cnnf_loss(out, y, tc.clean_coef, tc.recon_coef)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, batch {i // tc.batch_size}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(y)
            correct = (out.logits[-1].argmax(1) == y).sum()
            sums += torch.stack([loss.detach() * n, ce.detach() * n, recon.detach() * n, correct.float()])
        model.eval()
        val_acc = accuracy(scored, val, cfg.eval.batch_size)
        seconds = time.perf_counter() - t0
        loss_sum, ce_sum, recon_sum, correct_sum = (sums / len(train)).tolist()
        result = EpochResult(epoch, loss_sum, ce_sum, recon_sum, correct_sum, val_acc, seconds, len(train) / seconds)
        history.append(result)
        if callback is not None:  # a snapshot: later steps must not change what the callback holds
            snapshot = TrainState(epoch, copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), list(history))
            callback(result, snapshot)
    model.eval()
    return FitResult(model, tuple(history), device)


