"""cnnf.train.fit: learning, callbacks, seeding, NaN guard, resumption."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.data import DataSplits, load_splits
from cnnf.models import create_model
from cnnf.train import (
    EpochResult, FitResult, TrainState, TrainStep, build_optimizer, build_scheduler, fit, load_train_state, save_train_state,
)

# 300 training images (30 per class), 200 validation images: ~1.5 s per epoch on 2 cores.
SMALL_DATA = DataConfig(n_train=300, val_fraction=0.05)
SMALL = ExperimentConfig(
    data=SMALL_DATA,
    train=TrainConfig(epochs=2, batch_size=64, n_iterations=1, device="cpu", seed=3),
)

# Timing-dependent fields differ between identical runs.
TIMING = {"seconds", "images_per_s"}


def without_timing(history: tuple[EpochResult, ...] | list[EpochResult]) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(r).items() if k not in TIMING} for r in history]


class Run:
    """One 2-epoch fit whose callback saves the epoch-1 state to a file and keeps what it was given."""

    def __init__(self, splits: DataSplits, state_path: Path):
        self.calls: list[tuple[EpochResult, TrainState]] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.state_path = state_path

        def callback(result: EpochResult, state: TrainState) -> None:
            self.calls.append((result, state))
            self.snapshots.append({k: v.detach().clone() for k, v in state.model.items()})
            if result.epoch == 1:
                save_train_state(state, state_path)

        self.result: FitResult = fit(SMALL, splits, callback=callback)


@pytest.fixture(scope="module")
def small_splits() -> DataSplits:
    return load_splits(SMALL_DATA)


@pytest.fixture(scope="module")
def run(small_splits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(small_splits, tmp_path_factory.mktemp("train") / "epoch1.pt")


def test_fit_lowers_training_loss(run: Run) -> None:
    h = run.result.history
    assert [r.epoch for r in h] == [1, 2]
    assert h[1].train_loss < h[0].train_loss
    assert h[1].train_ce < h[0].train_ce
    for r in h:
        assert r.train_loss == pytest.approx(r.train_ce + 0.1 * r.train_recon, rel=1e-5)  # clean_coef 1, recon_coef 0.1
        assert 0.0 <= r.train_acc <= 1.0 and 0.0 <= r.val_acc <= 1.0
        assert r.seconds > 0 and r.images_per_s > 0


def test_callback_once_per_epoch_with_increasing_epochs(run: Run) -> None:
    assert [res.epoch for res, _ in run.calls] == [1, 2]
    assert [st.epoch for _, st in run.calls] == [1, 2]
    assert [len(st.history) for _, st in run.calls] == [1, 2]
    assert tuple(res for res, _ in run.calls) == run.result.history


def test_same_seed_gives_identical_run(run: Run, small_splits: DataSplits) -> None:
    again = fit(SMALL, small_splits)
    assert without_timing(again.history) == without_timing(run.result.history)
    for (name, a), b in zip(run.result.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resume_after_epoch_one_matches_uninterrupted_run(run: Run, small_splits: DataSplits) -> None:
    state = load_train_state(run.state_path)
    assert state.epoch == 1 and len(state.history) == 1
    assert without_timing(state.history) == without_timing(run.result.history[:1])
    for k, v in run.snapshots[0].items():
        assert torch.equal(state.model[k], v), f"saved state differs from the epoch-1 weights at {k}"
    calls: list[int] = []
    resumed = fit(SMALL, small_splits, resume=state, callback=lambda r, s: calls.append(r.epoch))
    assert calls == [2]
    assert without_timing(resumed.history) == without_timing(run.result.history)
    for (name, a), b in zip(run.result.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_callback_state_is_a_snapshot(run: Run) -> None:
    """A TrainState for epoch 1 must still hold epoch-1 weights after training goes on.

    fit passes model.state_dict() and optimizer.state_dict(), whose tensors share
    storage with the live parameters and Adam moments; later optimizer steps
    rewrite them in place, so a callback that keeps the state in memory (e.g. a
    "best so far" checkpoint) silently ends up with the final weights. The
    history list is copied, which shows the intent was a snapshot.
    """
    _, state1 = run.calls[0]
    for k, v in run.snapshots[0].items():
        assert torch.equal(state1.model[k], v), f"epoch-1 state changed after the callback returned ({k})"


def test_nan_loss_raises_floating_point_error(small_splits: DataSplits) -> None:
    """lr=1e30 blows the weights up after one Adam step; the next loss is NaN."""
    cfg = dataclasses.replace(SMALL, train=dataclasses.replace(SMALL.train, lr=1e30, epochs=1))
    with pytest.raises(FloatingPointError, match=r"training loss became (nan|inf|-inf) at epoch 1, batch \d+"):
        fit(cfg, small_splits)


@pytest.mark.slow
def test_training_on_the_sample_reaches_validation_accuracy(sample_splits: DataSplits) -> None:
    """2 epochs of the B.1 CNN-F (T=1, avg prediction) on the full sample (3600 images).

    Measured on 2 CPU cores (~22 s): val_acc 0.82 after 2 epochs with seed 0
    (0.77 after epoch 1; seeds 1 and 2 reach 0.79 and 0.86). The threshold
    leaves room for platform and library-version differences.
    """
    cfg = ExperimentConfig(
        train=TrainConfig(epochs=2, batch_size=128, n_iterations=1, device="cpu", seed=0),
        eval=EvalConfig(prediction="avg"),
    )
    result = fit(cfg, sample_splits)
    assert result.history[-1].val_acc >= 0.75
    assert result.history[-1].train_loss < result.history[0].train_loss


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "ind", "n_iterations"), [
    ("cnnf_fmnist_std", 0, 1), ("cnn_fmnist_std", 0, 0), ("cnnf_fmnist_adv", 2, 1), ("cnn_fmnist_adv", 0, 0),
])
def test_every_fashion_model_learns_on_the_sample(sample_splits: DataSplits, arch: str, ind: int, n_iterations: int) -> None:
    """2 epochs of standard training (Adam 1e-3) on 1,200 sample images, seed 0.

    Measured on 2 busy CPU cores (10-30 s each), validation accuracy after
    epoch 2 for seeds 0 / 1 / 2: cnnf_fmnist_std 0.735 / 0.79 / 0.77,
    cnn_fmnist_std 0.755 / 0.825 / 0.785, cnnf_fmnist_adv 0.67 / 0.75 / 0.76,
    cnn_fmnist_adv 0.72 / 0.78 / 0.79; the training loss roughly halves or
    better. Threshold: 0.6 (chance is 0.1).
    """
    splits = dataclasses.replace(sample_splits, train=sample_splits.train.head(1200))
    cfg = ExperimentConfig(
        model=ModelConfig(arch=arch, ind=ind),
        train=TrainConfig(epochs=2, batch_size=64, n_iterations=n_iterations, device="cpu", seed=0),
        eval=EvalConfig(prediction="avg"),
    )
    history = fit(cfg, splits).history
    assert history[-1].val_acc >= 0.6
    assert history[-1].train_loss < 0.7 * history[0].train_loss


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "ind", "n_iterations"), [("cnnf_wrn40_2", 5, 1), ("cnn_wrn40_2", 0, 0)])
def test_wrn_training_steps_lower_the_loss(arch: str, ind: int, n_iterations: int) -> None:
    """CIFAR-10 is not available offline, so the WRN-40-2 models fit a fixed
    batch of 4 seeded 32x32 images for 10 Adam steps (lr 3e-3) through the
    same TrainStep that `fit` runs. Measured: cross-entropy 2.49 -> 1.44
    (CNN-F, ind 5, T 1) and 2.34 -> 1.42 (plain CNN)."""
    torch.manual_seed(0)
    net = create_model(arch, ind=ind).train()
    tc = TrainConfig(batch_size=4, n_iterations=n_iterations, lr=3e-3, device="cpu")
    optimizer = build_optimizer(net, tc)
    step = TrainStep(net, tc, optimizer, build_scheduler(optimizer, tc, 10), "cifar10")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1, torch.arange(4)
    ce = [step(x, y, gen)[1].item() / 4 for _ in range(10)]
    assert ce[-1] < 0.75 * ce[0], ce
