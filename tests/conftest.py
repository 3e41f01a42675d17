"""Shared test helpers: repository paths and small sweep files."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

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


@contextlib.contextmanager
def private_ray(**resources: Any) -> Iterator[Any]:
    """A one-node local Ray started for a test (`ray.init(address="local",
    **resources)`), shut down afterwards with RAY_AUTH_MODE put back: ray.init
    turns token mode on in os.environ, which must not leak into later tests."""
    import ray

    from tuning.cluster import AUTH_MODE_ENV

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get(AUTH_MODE_ENV)
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False, **resources)
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop(AUTH_MODE_ENV, None)
        else:
            os.environ[AUTH_MODE_ENV] = saved
