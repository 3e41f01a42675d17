"""What an experiment kind is and the registry of them by name.

A kind is its trainable function plus what the sweep layer must know
without running it: the base config class, the metrics the trainable
reports, which of them may be objectives, and how to rebuild the trained
model from a trial's checkpoint. The kinds themselves are registered by the
modules of `tuning.kinds`, one per kind.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cnnf.registry import Registry
from tuning.experiments import is_test_metric


def _dotted(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


@dataclass(frozen=True)
class ExperimentKind:
    name: str
    trainable: Callable[..., None]  # (config: dict, *, base, cpus, gpus, stage_dir, replicates) -> None, reports through ray.tune
    config_cls: type
    epoch_metrics: tuple[str, ...]  # reported every epoch (may drive early stopping)
    # config -> the metrics reported once at the end, named by the library that
    # computes them (the evaluation suite, the FL pipeline), never listed by hand
    final_metrics: Callable[[Any], tuple[str, ...]]
    preflight: Callable[[Any], None]  # raises before launch if a trial could not start (data missing)
    load_model: Callable[[Path, Any], tuple[Any, Any]]  # (checkpoint dir, config) -> (torch module, input example)
    describe_eval: Callable[[Any], str]  # one line on what the final metrics measure, with units
    epochs_path: str = "train.epochs"  # dotted path of the epochs a trial reports (the schedulers' max_t)
    seed_path: str = "train.seed"  # dotted path of a replicate's training seed (its record in replicates.md)

    def metrics(self, config: Any) -> tuple[str, ...]:
        """Every metric a trial with this config reports (a replicated trial adds
        `<name>_std` for each)."""
        return self.epoch_metrics + self.final_metrics(config)

    def objective_metrics(self, config: Any) -> tuple[str, ...]:
        """Metrics a sweep may optimise: never a test-split metric."""
        return tuple(m for m in self.metrics(config) if not is_test_metric(m))

    def replicate_seed(self, config: Any) -> int:
        """The training seed of a (replicate's) config, for its record."""
        return int(_dotted(config, self.seed_path))


def check_data(config: Any) -> None:
    """The preflight of a kind whose config has `data`: its files exist (no torch)."""
    from cnnf.datafiles import check_available

    check_available(config.data)


EXPERIMENTS: Registry[ExperimentKind] = Registry("experiment kind")


def register_experiment(kind: ExperimentKind) -> None:
    EXPERIMENTS.register(kind.name)(lambda: kind)


def register_lazy_experiment(name: str, build: Callable[[], ExperimentKind]) -> None:
    """Register the kind `build` returns, built at its first lookup: registering
    it imports none of its library (no torch), only looking it up does."""
    EXPERIMENTS.register(name)(functools.cache(build))


def experiment_kind(name: str) -> ExperimentKind:
    return EXPERIMENTS.create(name)


def experiment_names() -> list[str]:
    return EXPERIMENTS.names()
