"""What every trial does, whatever its kind: set up its process, resume from
its checkpoint, train its replicates (one per seed) in lockstep, and report
each epoch and its end with a checkpoint (training states, config, report
files). The kinds (`tuning.kinds`) call `run_replicates` with their own
training and evaluation. Ray is imported inside the functions that report.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from cnnf.report import EvalReport, mean_std
from cnnf.train import EpochResult, TrainState, load_train_state, save_train_state
from tuning.cluster import trial_placement
from tuning.experiments import FINAL_KEY, REPORT_DIR
from tuning.kinds.registry import experiment_kind
from tuning.lockstep import run_lockstep
from tuning.plots import TRIAL_PLOT, plot_trial

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
EVAL_JSON = "eval.json"  # in report/: [[val, test] EvalReport dicts] per replicate


@dataclass
class ReplicateOutcome:
    """The end of one replicate (one seed) of a trial."""

    metrics: dict[str, float]  # final metrics, including the last epoch's
    extra: dict[str, Any] = field(default_factory=dict)  # JSON for the checkpoint's config.json
    write_report: Optional[Callable[[Path], None]] = None  # files for the run's report/ artifacts


def _state_file(replicate: int) -> str:
    return STATE_FILE if replicate == 0 else f"state_r{replicate}.pt"


def _report(metrics: dict[str, float], states: list[Optional[TrainState]], config: Any, extra: dict[str, Any] | None = None,
            write_report: Callable[[Path], None] | None = None, write_root: Callable[[Path], None] | None = None) -> None:
    """Report metrics with a checkpoint holding every replicate's training
    state; `write_report` may add files under the checkpoint's REPORT_DIR,
    which the tracker logs as run artifacts."""
    from ray import tune

    metrics = {**metrics, **trial_placement()}  # where the trial ran: its MLflow run's tags
    with tempfile.TemporaryDirectory() as tmp:
        for i, state in enumerate(states):
            if state is not None:
                save_train_state(state, Path(tmp) / _state_file(i))
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps({"config": asdict(config), **(extra or {})}, indent=2, default=str))
        if write_report is not None:
            (Path(tmp) / REPORT_DIR).mkdir()
            write_report(Path(tmp) / REPORT_DIR)
        if write_root is not None:
            write_root(Path(tmp))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def mean_over_replicates(per_replicate: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every numeric metric over the replicates and, with two or
    more, its sample std as `<name>_std`."""
    if len(per_replicate) == 1:
        return dict(per_replicate[0])
    out: dict[str, float] = {}
    for key in per_replicate[0]:
        values = [m[key] for m in per_replicate if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)]
        if len(values) != len(per_replicate):
            continue
        out[key], std = mean_std(values)
        if key != "epoch":
            out[f"{key}_std"] = std
    return out


def _replicates_table(seeds: list[int], per_replicate: list[dict[str, float]], metrics: list[str]) -> str:
    shown = [m for m in metrics if all(m in r for r in per_replicate)]
    lines = ["# Replicates\n", "One row per seed; the trial's metrics are the mean (std in `<metric>_std`).\n",
             "| seed | " + " | ".join(shown) + " |", "|---:|" + "---:|" * len(shown)]
    lines += [f"| {seed} | " + " | ".join(f"{r[m]:.4f}" for m in shown) + " |" for seed, r in zip(seeds, per_replicate)]
    return "\n".join(lines) + "\n"


def run_replicates(cfg: Any, n_replicates: int, seeded: Callable[[Any, int], Any], epochs: int,
                   run_one: Callable[[Any, Optional[TrainState], Callable[[EpochResult, TrainState], None]], ReplicateOutcome],
                   resume: list[Optional[TrainState]], figure: Optional[tuple[str, str]] = None) -> None:
    """Train `n_replicates` seeds of one configuration in lockstep, report the
    mean (and std) of each epoch with a checkpoint of all their states, then
    the mean of their final metrics with FINAL_KEY set. figure: (experiment
    kind, title) of the trial figure drawn into the final checkpoint; the kind
    also names each replicate's seed in the record (its `replicate_seed`), so
    more than one replicate needs it.

    The last epoch is not reported on its own: its metrics go with the final
    report, so a trial reports exactly once per epoch (what the schedulers count).
    """
    if n_replicates > 1 and figure is None:
        raise ValueError("replicates need their experiment kind (figure) to record their seeds")
    configs = [seeded(cfg, i) for i in range(n_replicates)]

    # The learning curves as reported: from the checkpoint's history on a restart, then each round.
    history = [mean_over_replicates([epoch_metrics(r) for r in results])
               for results in zip(*[state.history if state is not None else [] for state in resume])]

    states = list(resume)  # each replicate's latest training state: the checkpoint's, then each round's

    def on_round(items: list[tuple[EpochResult, TrainState]]) -> None:
        states[:] = [s for _, s in items]
        if items[0][0].epoch < epochs:
            metrics = mean_over_replicates([epoch_metrics(r) for r, _ in items])
            history.append(metrics)
            _report(metrics, [s for _, s in items], cfg)

    def job(i: int) -> Callable[[Callable[[Any], None]], ReplicateOutcome]:
        return lambda step: run_one(configs[i], resume[i], lambda result, state: step((result, state)))

    outcomes = run_lockstep([job(i) for i in range(n_replicates)], on_round)
    first = outcomes[0]
    metrics = {**mean_over_replicates([o.metrics for o in outcomes]), FINAL_KEY: True}
    extra = dict(first.extra)
    evals = [o.extra.get("eval") for o in outcomes]

    def write(folder: Path, inner: Optional[Callable[[Path], None]] = first.write_report) -> None:
        if inner is not None:
            inner(folder)
        if all(e is not None for e in evals):  # the evaluation reports of every replicate, for `sweep report`
            (folder / EVAL_JSON).write_text(json.dumps(evals, default=str))

    if n_replicates > 1:
        assert figure is not None
        seeds = [experiment_kind(figure[0]).replicate_seed(c) for c in configs]
        extra["replicates"] = [{"seed": seed, "metrics": o.metrics} for seed, o in zip(seeds, outcomes)]
        names = [k for k in first.metrics if isinstance(first.metrics[k], float) and k.endswith("_acc") and not k.startswith("test_")]

        def write(folder: Path, inner: Callable[[Path], None] = write) -> None:  # type: ignore[misc]
            inner(folder)
            (folder / "replicates.md").write_text(_replicates_table(seeds, [o.metrics for o in outcomes], names))

    _report(metrics, states, cfg, extra, write,
            _trial_figure(figure, history[: epochs - 1] + [metrics], cfg) if figure else None)


def _trial_figure(figure: tuple[str, str], history: list[dict[str, float]], cfg: Any) -> Callable[[Path], None]:
    """Draws the trial's figure here, in the trial's process, so the driver's
    scheduling loop does not wait on matplotlib."""
    kind_name, title = figure

    def draw(folder: Path) -> None:
        kind = experiment_kind(kind_name)
        plot_trial(history, kind, title, kind.describe_eval(cfg), folder / TRIAL_PLOT)

    return draw


def epoch_metrics(result: EpochResult) -> dict[str, float]:
    """One epoch's report. Tune's progress table shows the first few reported metrics: objective first."""
    return {"epoch": result.epoch, "val_acc": result.val_acc, "train_loss": result.train_loss, **result.metrics()}


EPOCH_METRICS = EpochResult.metric_names()
# Where a trial's time went (seconds, mean over replicates): training (every
# epoch, resumed ones included), the evaluations, and the whole replicate.
TRIAL_TIMINGS = ("time_train_s", "time_eval_s", "time_trial_s")
GPU_MEM_PEAK = "gpu_mem_peak_mib"  # reported only by a trial that ran on a GPU
TRIAL_METRICS = (*TRIAL_TIMINGS, GPU_MEM_PEAK)  # what every trial may report beside its kind's own metrics


def trial_timings(history: Sequence[EpochResult], reports: dict[str, EvalReport], started: float) -> dict[str, float]:
    """The trial's time metrics: TRIAL_TIMINGS and each report's breakdown as time_<split>_*."""
    out = {"time_train_s": sum(r.seconds for r in history), "time_eval_s": sum(r.seconds for r in reports.values()),
           "time_trial_s": time.perf_counter() - started}
    for split, report in reports.items():
        out.update(report.timings(f"time_{split}_"))
    out.update(gpu_memory_peak())
    return out


def start_trial(cpus: float, n_replicates: int = 1, gpus: float = 0.0) -> list[Optional[TrainState]]:
    """Per-trial process setup; returns each replicate's training state to
    resume from when Tune restarts the trial from its last checkpoint.

    A trial given a GPU sees only that one (Ray sets CUDA_VISIBLE_DEVICES),
    as cuda:0. With a fraction of a GPU (several trials packed on one), the
    trial's PyTorch allocator is capped at that fraction of the GPU's memory,
    so a trial that outgrows its share fails alone with an out-of-memory
    error instead of starving the trials beside it.
    """
    from ray import tune

    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    torch.set_num_threads(max(1, int(cpus)))
    if torch.cuda.is_available():  # the process may be reused from an earlier trial (reuse_actors)
        torch.cuda.empty_cache()
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()  # gpu_mem_peak_mib is this trial's, not the process's
        if gpus > 0:
            torch.cuda.set_device(0)
            if gpus < 1:
                torch.cuda.set_per_process_memory_fraction(gpus, 0)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return [None] * n_replicates
    if checkpoint.filesystem.type_name == "local" and not (Path(checkpoint.path) / _state_file(0)).exists():
        return _successor_states(Path(checkpoint.path), n_replicates)
    with checkpoint.as_directory() as d:
        return _load_states(Path(d), n_replicates)


def _load_states(folder: Path, n_replicates: int) -> list[Optional[TrainState]]:
    return [load_train_state(folder / _state_file(i)) if (folder / _state_file(i)).exists() else None
            for i in range(n_replicates)]


def _successor_states(missing: Path, n_replicates: int) -> list[Optional[TrainState]]:
    """The states of the newest complete checkpoint beside `missing`, the
    checkpoint Tune restored the trial from but which is gone.

    Tune keeps one checkpoint per trial: registering a trial's new checkpoint
    deletes the previous one at once, and the experiment state that names the
    new one is saved later in the same controller step. A driver killed in
    between leaves a state naming the deleted checkpoint. Its successor is
    complete (the trial wrote it before reporting) and its epoch was already
    handed to the callbacks, so the trial goes on from there instead of from
    scratch, and no epoch is trained or logged twice.
    """
    for folder in sorted(missing.parent.glob("checkpoint_*"), reverse=True):
        try:
            states = _load_states(folder, n_replicates)
        except Exception:  # noqa: BLE001 - a checkpoint cut short by the kill: try the one before
            continue
        if states[0] is not None:
            print(f"trial resumes from {folder.name} (epoch {states[0].epoch}): the checkpoint Tune restored, "
                  f"{missing.name}, was deleted before Tune saved its state", file=sys.stderr, flush=True)
            return states
    raise FileNotFoundError(f"{missing}: the checkpoint to resume from is gone and no complete checkpoint is beside it")


def trial_device(requested: str, gpus: float) -> str:
    """The device a trial may use: 'auto' means its GPU only if Ray gave it one.

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so "cuda" is the
    trial's own GPU; a trial that asked for none must not grab a visible one
    and runs on the CPU. A trial that Ray gave a GPU torch cannot see (a
    CPU-only torch, no driver, a node that declares GPUs it does not have)
    fails here, naming the GPU, rather than training on the CPU unnoticed
    while it holds a GPU slot of the cluster.
    """
    if gpus > 0 and (requested == "auto" or requested.startswith("cuda")) and not torch.cuda.is_available():
        raise GPUUnavailableError(gpu_unavailable_message(gpus))
    if requested != "auto":
        return requested
    return "cuda" if gpus > 0 else "cpu"


class GPUUnavailableError(RuntimeError):
    """Ray gave the trial a GPU that torch in the trial's process cannot use."""


def gpu_unavailable_message(gpus: float) -> str:
    """One line: which GPU Ray gave the trial, and why torch cannot use it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, finds no usable device"
    ray_ids = trial_placement().get("trial_gpu_ids", "?")
    return (f"resources.gpu {gpus:g}: Ray gave this trial GPU {ray_ids or '?'} (CUDA_VISIBLE_DEVICES={visible!r}) "
            f"on {socket.gethostname()}, but torch {torch.__version__} ({build}) cannot use it; the trial does not fall "
            f"back to the CPU: fix the node's driver or torch, declare no GPUs the node lacks (ray start --num-gpus), "
            f"or set resources.gpu: 0")


def gpu_memory_peak() -> dict[str, float]:
    """The trial process's peak CUDA memory (the caching allocator's reserved
    bytes, which the memory-fraction cap bounds) in MiB; empty off the GPU."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {GPU_MEM_PEAK: torch.cuda.max_memory_reserved() / 2**20}

