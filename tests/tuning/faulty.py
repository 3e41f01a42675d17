"""Fault injection for tests/tuning/test_resume.py: an experiment kind
`cnnf-faulty`, the CNN-F trainable raising once in two of its trials.

Trial 0 fails once, when epoch FAIL_AT_EPOCH has been trained but before it is
reported (so its last checkpoint is the one of epoch FAIL_AT_EPOCH - 1); trial
FAIL_AFTER_FINAL fails once right after its final report (its last checkpoint
is the final one). A marker file per trial in the sweep's folder makes each
fault happen once: the retry trains on. Every start of the trainable appends
a line to START_LOG in the sweep's folder saying whether Tune handed it a
checkpoint, and of which epoch.

Ray workers unpickle the trainable by value (register this module with
`ray.cloudpickle.register_pickle_by_value`), so they need not import the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

KIND = "cnnf-faulty"
FAIL_AT_EPOCH = 2  # trial 0 fails here: trained, not yet reported
FAIL_AFTER_FINAL = 1  # this trial fails right after its final report (as a worker dying then would)
MARKER = "fault-injected-{trial}"
START_LOG = "faulty-starts.jsonl"
MESSAGE = "injected fault"


def train_faulty(config: dict[str, Any], *, base: Any, cpus: float, gpus: float = 0.0,
                 stage_dir: Optional[str] = None, replicates: int = 1) -> None:
    from ray import tune

    import tuning.replicates as machinery
    from cnnf.train import load_train_state
    from tuning.experiments import FINAL_KEY, TRIAL_KEY
    from tuning.kinds.cnnf import train_cnnf

    sweep_dir = Path(stage_dir).parent  # stage_dir is <sweep folder>/stages
    number = int(config[TRIAL_KEY])
    checkpoint = tune.get_checkpoint()
    epoch = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            epoch = load_train_state(Path(d) / machinery.STATE_FILE).epoch
    with (sweep_dir / START_LOG).open("a") as f:
        f.write(json.dumps({"trial": number, "checkpoint": checkpoint is not None, "epoch": epoch, "pid": os.getpid()}) + "\n")

    def first_time() -> bool:
        try:
            os.close(os.open(sweep_dir / MARKER.format(trial=number), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False  # failed once already: train on
        return True

    original = machinery._report

    def report(metrics: dict, *args: Any, **kwargs: Any) -> None:
        if number == 0 and metrics.get("epoch") == FAIL_AT_EPOCH and not metrics.get(FINAL_KEY) and first_time():
            raise RuntimeError(f"{MESSAGE} in trial {number} at epoch {FAIL_AT_EPOCH}")
        original(metrics, *args, **kwargs)
        if number == FAIL_AFTER_FINAL and metrics.get(FINAL_KEY) and first_time():
            raise RuntimeError(f"{MESSAGE} in trial {number} after its final report")

    machinery._report = report
    try:
        train_cnnf(config, base=base, cpus=cpus, gpus=gpus, stage_dir=stage_dir, replicates=replicates)
    finally:
        machinery._report = original


def register() -> None:
    """Register `cnnf-faulty` (once per process) and make Ray pickle this module by value."""
    import sys

    from ray import cloudpickle

    from tuning.kinds import EXPERIMENTS, experiment_kind, register_experiment

    if KIND not in EXPERIMENTS:
        register_experiment(dataclasses.replace(experiment_kind("cnnf"), name=KIND, trainable=train_faulty))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
