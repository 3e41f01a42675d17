"""Trial-side helpers that need no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnf.train import TrainState, save_train_state
from tuning.replicates import _state_file, _successor_states, trial_device


def test_auto_device_follows_the_trials_gpu_request() -> None:
    assert trial_device("auto", 0.0) == "cpu"  # a visible GPU is not the trial's to take
    assert trial_device("auto", 0.5) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert trial_device("cpu", 1.0) == "cpu"
    assert trial_device("cuda:1", 0.0) == "cuda:1"  # an explicit device is the user's call


def _checkpoint(folder: Path, epochs: list[int]) -> None:
    folder.mkdir(parents=True)
    for i, epoch in enumerate(epochs):
        save_train_state(TrainState(epoch, {"w": torch.full((2,), float(epoch))}, {}), folder / _state_file(i))


def test_a_deleted_restore_checkpoint_resumes_from_its_newest_complete_successor(tmp_path: Path, capsys) -> None:
    """Tune restored the trial from checkpoint_000001, which its own
    num_to_keep=1 deleted; checkpoint_000003 was cut short by the kill."""
    trial = tmp_path / "trial"
    _checkpoint(trial / "checkpoint_000000", [1, 1])
    _checkpoint(trial / "checkpoint_000002", [3, 3])
    (trial / "checkpoint_000003").mkdir()
    (trial / "checkpoint_000003" / _state_file(0)).write_bytes(b"cut short")
    states = _successor_states(trial / "checkpoint_000001", 2)
    assert [s.epoch for s in states] == [3, 3]
    assert torch.equal(states[1].model["w"], torch.full((2,), 3.0))
    assert "resumes from checkpoint_000002 (epoch 3)" in capsys.readouterr().err


def test_a_deleted_restore_checkpoint_with_nothing_beside_it_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "trial").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint_000001: the checkpoint to resume from is gone"):
        _successor_states(tmp_path / "trial" / "checkpoint_000001", 1)
