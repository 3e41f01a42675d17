"""Trial-side helpers that need no Ray."""

from __future__ import annotations

import torch

from tuning.trainables import trial_device


def test_auto_device_follows_the_trials_gpu_request() -> None:
    assert trial_device("auto", 0.0) == "cpu"  # a visible GPU is not the trial's to take
    assert trial_device("auto", 0.5) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert trial_device("cpu", 1.0) == "cpu"
    assert trial_device("cuda:1", 0.0) == "cuda:1"  # an explicit device is the user's call
