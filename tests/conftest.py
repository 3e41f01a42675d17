"""Shared test helpers: repository paths and small sweep files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A metric a trial reports that its experiment kind does not declare is an
# error in the tests (tuning.tracking.STRICT_METRICS_ENV), not just a warning.
os.environ["CNNF_STRICT_METRICS"] = "1"
EXAMPLES = REPO / "sweeps" / "examples"
QUICKSTART = EXAMPLES / "quickstart.yaml"

# A sweep small enough to run in process in well under a minute on 2 cores.
TINY_SWEEP = """\
name: tiny
experiment: cnnf
seed: 3
base:
  data:
    dataset: fashion-mnist-sample
    n_train: 256
  train:
    epochs: 2
    batch_size: 64
  eval:
    pgd_steps: 2
    n_examples: 32
space:
  model.ind: {choice: [0, 2]}
  model.step_size: {loguniform: [0.05, 0.2]}
search:
  metric: val_acc
  num_trials: 2
  max_concurrent: 2
resources:
  cpu: 1
"""


@pytest.fixture
def write_sweep(tmp_path: Path):
    """Write YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "sweep.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
