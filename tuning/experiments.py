"""Experiment kinds a sweep can run, by name (`experiment: cnnf` in the YAML).

A kind is its trainable function plus what the sweep layer must know
without running it: the base config class, the metrics the trainable
reports, which of them may be objectives, and how to rebuild the trained
model from a trial's checkpoint. Adding a kind is one `register_experiment`
call next to its trainable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cnnf.registry import Registry

# A trainable may write files (evaluation tables, plots) into this folder of
# its final checkpoint; the tracker logs them as the trial run's artifacts.
REPORT_DIR = "report"
TRIAL_KEY = "_trial"  # the Optuna trial number, in each Tune trial's config (not a config field)
FINAL_KEY = "final_report"  # true in the report of a trial that ran to its end (absent: stopped early)


@dataclass(frozen=True)
class ExperimentKind:
    name: str
    trainable: Callable[..., None]  # (config: dict, *, base, cpus, gpus, stage_dir) -> None, reports through ray.tune
    config_cls: type
    epoch_metrics: tuple[str, ...]  # reported every epoch (may drive early stopping)
    # config -> the metrics reported once at the end, named by the library that
    # computes them (the evaluation suite, the FL pipeline), never listed by hand
    final_metrics: Callable[[Any], tuple[str, ...]]
    preflight: Callable[[Any], None]  # raises before launch if a trial could not start (data missing)
    load_model: Callable[[Path, Any], tuple[Any, Any]]  # (checkpoint dir, config) -> (torch module, input example)
    describe_eval: Callable[[Any], str]  # one line on what the final metrics measure, with units
    epochs_path: str = "train.epochs"  # dotted path of the epochs a trial reports (the schedulers' max_t)

    def metrics(self, config: Any) -> tuple[str, ...]:
        """Every metric a trial with this config reports (a replicated trial adds
        `<name>_std` for each)."""
        return self.epoch_metrics + self.final_metrics(config)

    def objective_metrics(self, config: Any) -> tuple[str, ...]:
        """Metrics a sweep may optimise: never a test-split metric."""
        return tuple(m for m in self.metrics(config) if not is_test_metric(m))


def is_test_metric(name: str) -> bool:
    """Measured on the test split: reported, never optimised."""
    return name.startswith("test_")


EXPERIMENTS: Registry[ExperimentKind] = Registry("experiment kind")


def register_experiment(kind: ExperimentKind) -> None:
    EXPERIMENTS.register(kind.name)(lambda: kind)


def experiment_kind(name: str) -> ExperimentKind:
    import tuning.trainables  # noqa: F401  (registers the kinds)

    return EXPERIMENTS.create(name)


def experiment_names() -> list[str]:
    import tuning.trainables  # noqa: F401

    return EXPERIMENTS.names()
