"""Trial-side helpers that need no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnf.train import TrainState, save_train_state
from tuning.replicates import (GPU_MEM_PEAK, GPUUnavailableError, _state_file, _successor_states, gpu_memory_peak,
                                trial_device)


def test_auto_device_follows_the_trials_gpu_request() -> None:
    assert trial_device("auto", 0.0) == "cpu"  # a visible GPU is not the trial's to take
    assert trial_device("cpu", 1.0) == "cpu"  # an explicit device is the user's call
    assert trial_device("cuda:1", 0.0) == "cuda:1"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_trial_given_a_gpu_uses_it() -> None:
    assert trial_device("auto", 0.5) == "cuda"
    assert trial_device("cuda", 1.0) == "cuda"


@pytest.mark.parametrize("requested", ["auto", "cuda", "cuda:0"])
def test_a_gpu_torch_cannot_see_fails_the_trial_instead_of_falling_back(requested: str, monkeypatch) -> None:
    """Ray gave the trial GPU 1 (a node declaring GPUs it lacks, a CPU-only
    torch, a broken driver): training on the CPU would hold a GPU slot and
    report CPU figures as GPU ones."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(GPUUnavailableError) as info:
        trial_device(requested, 0.25)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("resources.gpu 0.25: Ray gave this trial GPU")
    assert "CUDA_VISIBLE_DEVICES='1'" in message and f"torch {torch.__version__}" in message
    assert "does not fall back to the CPU" in message
    assert trial_device("auto", 0.0) == "cpu"  # without a GPU request the same process trains on the CPU


def test_gpu_memory_peak_is_empty_off_the_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_memory_peak() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_peak_reads_the_allocator() -> None:
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    assert gpu_memory_peak()[GPU_MEM_PEAK] >= 64
    del x


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


@pytest.mark.parametrize("kind", ["cnnf", "fl"])
def test_every_kind_declares_the_gpu_memory_metric(kind: str) -> None:
    """A trial on a GPU reports gpu_mem_peak_mib; an undeclared metric is an error under the tests' strict mode."""
    from cnnf.config import ExperimentConfig
    from fl.config import FLConfig
    from tuning.kinds import experiment_kind

    base = ExperimentConfig() if kind == "cnnf" else FLConfig()
    assert GPU_MEM_PEAK in experiment_kind(kind).metrics(base)
