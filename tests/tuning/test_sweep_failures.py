"""A sweep that is interrupted or whose trials fail keeps every finished
trial's data and leaves no MLflow run RUNNING."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.cli import EXIT_INTERRUPTED
from sweeps.spec import parse_sweep
from tests.conftest import REPO, TINY_SWEEP
from tuning.runner import JOURNAL, MLFLOW_DB, launch_sweep

pytestmark = pytest.mark.slow


def _runs(db: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tiny")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_ctrl_c_keeps_finished_trials_and_closes_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SWEEP.replace("num_trials: 2", "num_trials: 4").replace("max_concurrent: 2", "max_concurrent: 1"))
    exe = Path(sys.executable).with_name("sweep")
    proc = subprocess.Popen([str(exe), "launch", str(spec), "-o", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            # The journal appears after the driver has created the MLflow store;
            # opening the store earlier would race its schema migration.
            ready = any(out.glob(f"tiny-*/{JOURNAL}"))
            if ready and any(r.info.status == "FINISHED" for r in _runs(out / MLFLOW_DB)):
                break
            time.sleep(2)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "interrupted: 1 of 4 trials finished" in output or "interrupted: 2 of 4 trials finished" in output, output

    runs = _runs(out / MLFLOW_DB)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs), [r.info.status for r in runs]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert finished and all("val_pgd_first_acc" in r.data.metrics for r in finished)


def test_failing_trials_are_failed_runs_with_their_reason(tmp_path: Path) -> None:
    text = TINY_SWEEP.replace("    batch_size: 64", "    batch_size: 64\n    lr: 1.0e+30").replace("resources:", f"output_dir: {tmp_path}\nresources:")
    loaded = parse_sweep(text, "tiny.yaml")
    outcome = launch_sweep(loaded.config, loaded.text)
    assert (outcome.status, outcome.n_finished, outcome.n_failed, outcome.best) == ("FINISHED", 0, 2, None)
    children = [r for r in _runs(tmp_path / MLFLOW_DB) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FAILED"
        assert "FloatingPointError: training loss became nan" in run.data.tags["error"]
