"""Experiment kinds a sweep can run, by name (`experiment: cnnf` in the YAML).
Importing this package registers every kind, one module each.

Adding a workload is one module here (its trainable, final-metric naming,
preflight, model loading, and one registration) next to its library package.
Registering imports neither Ray nor torch: a kind is built at its first lookup
and its trainable imports Ray when a trial runs.
"""

from tuning.kinds import cnnf, fl  # noqa: F401  (registers the kinds)
from tuning.kinds.registry import (EXPERIMENTS, ExperimentKind, experiment_kind, experiment_names, register_experiment,
                                   register_lazy_experiment)

__all__ = [
    "EXPERIMENTS",
    "ExperimentKind",
    "experiment_kind",
    "experiment_names",
    "register_experiment",
    "register_lazy_experiment",
]
