"""Search-space distributions and applying sampled values to a typed config.

Parameters are named by their dotted path in the experiment's base config
(`model.ind`, `train.clean_coef`), the same names the YAML uses and MLflow
shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Union


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


ParamSpec = Union[Uniform, LogUniform, IntRange, Choice]


def boundary_values(spec: ParamSpec) -> list[Any]:
    """Values every config in the space must accept: both ends, or every choice."""
    if isinstance(spec, Choice):
        return list(spec.values)
    return [spec.low, spec.high]


def to_optuna(space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Optuna distributions, keyed by the dotted parameter names."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, Uniform):
            out[name] = FloatDistribution(spec.low, spec.high)
        elif isinstance(spec, LogUniform):
            out[name] = FloatDistribution(spec.low, spec.high, log=True)
        elif isinstance(spec, IntRange):
            out[name] = IntDistribution(spec.low, spec.high, step=spec.step, log=spec.log)
        else:
            out[name] = CategoricalDistribution(spec.values)
    return out


def field_paths(config: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a nested dataclass instance."""
    paths: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            paths += field_paths(value, f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def apply_params(config: Any, params: Mapping[str, Any]) -> Any:
    """Return `config` with each dotted path set, rebuilt with dataclasses.replace.

    Every rebuilt dataclass re-runs its own validation.
    """
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for path, value in params.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = apply_params(getattr(config, head), sub)
    return dataclasses.replace(config, **direct)
