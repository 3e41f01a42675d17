"""Typed sweep-level settings (the YAML's top level besides `base` and `space`).

YAML keys are exactly these field names; `sweeps/spec.py` builds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from cnnf.config import ConfigError, require

from tuning.space import ParamSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SearchConfig:
    """What to optimise and how many trials to run."""

    metric: str = "val_acc"  # a validation metric of the experiment kind
    mode: Literal["max", "min"] = "max"
    sampler: Literal["tpe", "random"] = "tpe"
    num_trials: int = 10
    max_concurrent: int = 2

    def __post_init__(self) -> None:
        require(self.num_trials >= 1, "num_trials", f"must be >= 1, got {self.num_trials}")
        require(self.max_concurrent >= 1, "max_concurrent", f"must be >= 1, got {self.max_concurrent}")


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
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = "runs"  # sweeps go to output_dir/<name>-<timestamp>/
    seed: Optional[int] = 0  # seeds the sampler; None: drawn at launch and logged

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ConfigError("name", f"must match {NAME_PATTERN.pattern} (it names folders and runs), got {self.name!r}")
