"""GPU placement probe for tests/tuning/test_gpu_packing.py: an experiment
kind `cnnf-gpuprobe`, the CNN-F trainable run on the CPU by a trial that
first records what Ray gave it.

The test's Ray node declares GPUs it does not have (`ray.init(num_gpus=2)`),
so Ray assigns them (CUDA_VISIBLE_DEVICES, `ray.get_gpu_ids()`) while torch
sees none. Each trial appends one line to PROBE_LOG in the sweep's folder:
its trial number, worker pid, CUDA_VISIBLE_DEVICES, Ray's GPU ids, what
`trial_device("auto", gpus)` said (it must refuse: the GPU cannot be used),
and when the trial held its slot. It then holds the slot HOLD_S seconds, so
that trials packed at once overlap, and trains on the CPU (the device the
product would refuse to choose silently), reporting through the real trial
machinery so the MLflow runs get their placement tags.

Ray workers unpickle the trainable by value (register this module with
`ray.cloudpickle.register_pickle_by_value`), so they need not import the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

KIND = "cnnf-gpuprobe"
PROBE_LOG = "gpu-probe.jsonl"
HOLD_S = 2.0


def train_probe(config: dict[str, Any], *, base: Any, cpus: float, gpus: float = 0.0,
                stage_dir: Optional[str] = None, replicates: int = 1) -> None:
    import ray

    from tuning.experiments import TRIAL_KEY
    from tuning.kinds.cnnf import train_cnnf
    from tuning.replicates import GPUUnavailableError, trial_device

    started = time.time()
    try:
        device, refusal = trial_device("auto", gpus), None
    except GPUUnavailableError as exc:
        device, refusal = None, str(exc)
    record = {"trial": int(config[TRIAL_KEY]), "pid": os.getpid(), "gpus": gpus,
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": device, "refusal": refusal,
              "start": started}
    time.sleep(HOLD_S)
    on_cpu = dataclasses.replace(base, train=dataclasses.replace(base.train, device="cpu"))
    train_cnnf(config, base=on_cpu, cpus=cpus, gpus=gpus, stage_dir=stage_dir, replicates=replicates)
    record["end"] = time.time()
    with (Path(stage_dir).parent / PROBE_LOG).open("a") as f:  # stage_dir is <sweep folder>/stages
        f.write(json.dumps(record) + "\n")


def register() -> None:
    """Register `cnnf-gpuprobe` (once per process) and make Ray pickle this module by value."""
    import sys

    from ray import cloudpickle

    from tuning.kinds import EXPERIMENTS, experiment_kind, register_experiment

    if KIND not in EXPERIMENTS:
        register_experiment(dataclasses.replace(experiment_kind("cnnf"), name=KIND, trainable=train_probe))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
