"""Tune's trial schedulers by name (`scheduler.name` in the YAML), registered
like the samplers in tuning/searchers.py: adding one is one function here.

Each builder gets the scheduler config, the metric and mode it compares
trials by and `max_t`, the most epochs a trial reports. Rungs count the
trial's own `epoch`, not Tune's `training_iteration`: a trial resumed from
a checkpoint newer than the one Tune recorded (tuning.replicates) has
Tune's count one behind.
"""

from __future__ import annotations

from typing import Any, Callable

from cnnf.registry import Registry

from tuning.config import SchedulerConfig

TIME_ATTR = "epoch"

SCHEDULERS: Registry[Callable[..., Any]] = Registry("scheduler")


@SCHEDULERS.register("fifo")
def _fifo(sc: SchedulerConfig, metric: str, mode: str, max_t: int) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@SCHEDULERS.register("asha")
def _asha(sc: SchedulerConfig, metric: str, mode: str, max_t: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=max_t, grace_period=sc.grace_period,
                         reduction_factor=sc.reduction_factor)


@SCHEDULERS.register("hyperband")
def _hyperband(sc: SchedulerConfig, metric: str, mode: str, max_t: int) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=max_t, reduction_factor=sc.reduction_factor)


@SCHEDULERS.register("median")
def _median(sc: SchedulerConfig, metric: str, mode: str, max_t: int) -> Any:
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(time_attr=TIME_ATTR, metric=metric, mode=mode, grace_period=sc.grace_period,
                              min_samples_required=sc.min_samples_required)
