"""An experiment kind `cnnf-extra-attack` for tests/tuning/test_metrics.py:
the CNN-F trial with one more attack in its evaluation suite, declared
nowhere but in that suite.

Ray workers unpickle the trainable by value (`register` registers this module
with `ray.cloudpickle.register_pickle_by_value`), so they need not import the tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

KIND = "cnnf-extra-attack"
LABEL = "pgd_l2_extra"  # the new attack's label: metrics val_pgd_l2_extra_acc, test_..., time_val_pgd_l2_extra_s


def extra_suites(cfg: Any) -> tuple[Any, Any]:
    from cnnf.evaluate import AttackSpec
    from tuning.kinds.cnnf import cnnf_suites

    added = AttackSpec.of("pgd_l2", 0.5, steps=2, label=LABEL)
    return tuple(dataclasses.replace(s, attacks=s.attacks + (added,)) for s in cnnf_suites(cfg))  # type: ignore[return-value]


def train_extra(config: dict[str, Any], **kwargs: Any) -> None:
    from tuning.kinds.cnnf import train_cnnf

    train_cnnf(config, suites=extra_suites, **kwargs)


def final_metrics(cfg: Any) -> tuple[str, ...]:
    from tuning.kinds.cnnf import cnnf_final_metrics

    return cnnf_final_metrics(cfg, extra_suites)


def register() -> None:
    """Register `cnnf-extra-attack` (once per process) and make Ray pickle this module by value."""
    import sys

    from ray import cloudpickle

    from tuning.kinds import EXPERIMENTS, experiment_kind, register_experiment

    if KIND not in EXPERIMENTS:
        register_experiment(dataclasses.replace(experiment_kind("cnnf"), name=KIND, trainable=train_extra,
                                                final_metrics=final_metrics))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
