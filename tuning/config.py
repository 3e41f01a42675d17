"""Typed sweep-level settings (the YAML's top level besides `base` and `space`).

YAML keys are exactly these field names; `sweeps/spec.py` builds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from cnnf.config import ConfigError, require

from tuning.space import ParamSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SAMPLER_NAMES = ("tpe", "random", "grid", "gp", "cmaes", "nsga2")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "nsga2", "gp")  # Optuna 5 samplers that handle several objectives


@dataclass(frozen=True)
class SearchConfig:
    """What to optimise, how to choose trials and how many to run.

    `metric` is one metric name or a list of several (a multi-objective
    sweep: Optuna optimises them jointly and the sweep reports the Pareto
    front); `mode` is one mode for all of them or one per metric.
    """

    metric: Union[str, list[str]] = "val_acc"  # validation metrics of the experiment kind
    mode: Union[Literal["max", "min"], list[Literal["max", "min"]]] = "max"
    sampler: Literal["tpe", "random", "grid", "gp", "cmaes", "nsga2"] = "tpe"
    num_trials: int = 10  # configurations to try (each runs `replicates` seeds)
    max_concurrent: int = 2
    replicates: int = 1  # seeds per configuration; the objective is their mean, the std is recorded
    max_failures: int = 0  # retries of a trial that raises, each from its last checkpoint

    def __post_init__(self) -> None:
        metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        modes = [self.mode] if isinstance(self.mode, str) else list(self.mode)
        require(bool(metrics), "metric", "give at least one metric")
        require(len(set(metrics)) == len(metrics), "metric", f"metrics must be distinct, got {metrics}")
        require(len(modes) in (1, len(metrics)), "mode",
                f"give one mode for all metrics or one per metric ({len(metrics)}), got {modes}")
        require(all(m in ("max", "min") for m in modes), "mode", f"expected max or min, got {modes}")
        require(self.num_trials >= 1, "num_trials", f"must be >= 1, got {self.num_trials}")
        require(self.max_concurrent >= 1, "max_concurrent", f"must be >= 1, got {self.max_concurrent}")
        require(self.replicates >= 1, "replicates", f"must be >= 1, got {self.replicates}")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        if len(metrics) > 1:
            require(self.sampler in MULTI_OBJECTIVE_SAMPLERS, "sampler",
                    f"{self.sampler!r} optimises one objective; with several metrics use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        modes = [self.mode] if isinstance(self.mode, str) else list(self.mode)
        return modes * len(self.metrics) if len(modes) == 1 else modes

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1


@dataclass(frozen=True)
class SchedulerConfig:
    """Early stopping of unpromising trials, by their per-epoch reports.

    fifo runs every trial to the end. asha and hyperband stop trials at
    rungs (grace_period, grace_period * reduction_factor, ... up to max_t
    epochs); median stops a trial whose best result so far is worse than
    the median of the other trials' running averages at the same epoch.
    Stopped trials are told to Optuna as pruned.
    """

    name: Literal["fifo", "asha", "hyperband", "median"] = "fifo"
    metric: Optional[str] = None  # a per-epoch metric; None: the objective (required with several objectives)
    mode: Optional[Literal["max", "min"]] = None  # None: the objective's mode (required when metric is not an objective)
    grace_period: int = 1  # epochs before a trial can be stopped
    reduction_factor: float = 2.0  # asha, hyperband
    max_t: Optional[int] = None  # epochs; None: the largest train/retrain epochs of the space
    min_samples_required: int = 3  # median: trials needed before it stops any

    def __post_init__(self) -> None:
        require(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        require(self.reduction_factor > 1, "reduction_factor", f"must be > 1, got {self.reduction_factor}")
        require(self.max_t is None or self.max_t >= self.grace_period, "max_t",
                f"must be >= grace_period ({self.grace_period}), got {self.max_t}")
        require(self.min_samples_required >= 1, "min_samples_required", f"must be >= 1, got {self.min_samples_required}")


@dataclass(frozen=True)
class BudgetConfig:
    """When to stop the sweep before num_trials configurations have run."""

    time_s: Optional[float] = None  # wall-clock seconds for the whole sweep (per launch or resume)
    max_failed_trials: Optional[int] = None  # stop launching trials once this many have failed
    target: Optional[float] = None  # stop once a finished trial reaches this objective value (one objective only)

    def __post_init__(self) -> None:
        require(self.time_s is None or self.time_s > 0, "time_s", f"must be > 0, got {self.time_s}")
        require(self.max_failed_trials is None or self.max_failed_trials >= 1, "max_failed_trials",
                f"must be >= 1, got {self.max_failed_trials}")


@dataclass(frozen=True)
class ResourcesConfig:
    """Resources of one trial; a fractional gpu packs several trials on a GPU."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        require(self.cpu > 0, "cpu", f"must be > 0, got {self.cpu}")
        require(self.gpu >= 0, "gpu", f"must be >= 0, got {self.gpu}")
        require(self.gpu <= 1 or float(self.gpu).is_integer(), "gpu", f"a request above 1 must be a whole number of GPUs, got {self.gpu}")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: None uri = SQLite file `mlflow.db` in the output folder."""

    uri: Optional[str] = None
    experiment: Optional[str] = None  # None: the sweep name


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: the experiment, its base config, the space, and how to run it."""

    name: str
    experiment: str
    base: Any  # the experiment kind's config dataclass
    space: dict[str, ParamSpec]
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "runs"  # sweeps go to output_dir/<name>-<timestamp>/
    seed: Optional[int] = 0  # seeds the sampler; None: drawn at launch and logged

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError("name", f"must match {NAME_PATTERN.pattern} (it names folders and runs), got {self.name!r}")
        if self.budget.target is not None and self.search.multi_objective:
            raise ConfigError("budget.target", "a target value needs a single objective")
        if self.scheduler.name != "fifo" and self.search.multi_objective and self.scheduler.metric is None:
            raise ConfigError("scheduler.metric", f"{self.scheduler.name} stops trials by one metric; name it when search.metric lists several")

    @property
    def scheduler_metric(self) -> tuple[str, str]:
        """(metric, mode) the early-stopping scheduler compares trials by."""
        metric = self.scheduler.metric or self.search.metrics[0]
        if self.scheduler.mode is not None:
            return metric, self.scheduler.mode
        if metric in self.search.metrics:
            return metric, self.search.modes[self.search.metrics.index(metric)]
        return metric, "max"  # the spec requires scheduler.mode here; this serves configs built in code
