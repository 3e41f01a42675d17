"""The sweep YAML: read once, validated once, into typed configs.

The only module that reads YAML. Pydantic models are generated from the
frozen dataclasses (`tuning.config.SweepConfig`, and the experiment kind's
base config such as `cnnf.config.ExperimentConfig`), so YAML keys are
exactly the dataclass field names, and every error names the file, the
line, the dotted key and what was expected, in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from cnnf.config import ConfigError
from tuning.config import SweepConfig
from tuning.experiments import ExperimentKind, experiment_kind, experiment_names
from tuning.space import Choice, Condition, Grid, IntRange, LogUniform, ParamSpec, Uniform, apply_params, boundary_values, field_paths, grid_size

Path_ = tuple[str, ...]


class SpecError(ValueError):
    """An invalid sweep file; str() is one line: FILE:LINE: KEY: what was expected."""

    def __init__(self, file: str, line: Optional[int], key: str, message: str):
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True)
class LoadedSweep:
    config: SweepConfig
    text: str
    path: Path


# --- YAML with line numbers ----------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-3 (1.1 reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Lines:
    """Line of every key and value in the document, by dotted path."""

    def __init__(self) -> None:
        self.key: dict[Path_, int] = {}
        self.value: dict[Path_, int] = {}

    def of(self, path: Path_, *, key: bool = True) -> Optional[int]:
        while path:
            table = self.key if key else self.value
            if path in table:
                return table[path]
            path, key = path[:-1], True
        return None


def _walk(node: yaml.Node, path: Path_, lines: _Lines, file: str) -> None:
    lines.value[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            name = str(k.value)
            if name in seen:
                raise SpecError(file, k.start_mark.line + 1, ".".join(path + (name,)), "duplicate key")
            seen.add(name)
            lines.key[path + (name,)] = k.start_mark.line + 1
            _walk(v, path + (name,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, path + (str(i),), lines, file)


def _parse(text: str, file: str) -> tuple[Any, _Lines]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(file, None, "", "the file is empty; expected a mapping with at least name, experiment and space")
        lines = _Lines()
        _walk(node, (), lines, file)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(file, mark.line + 1 if mark else None, "", f"invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(file, 1, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data, lines


# --- dataclass -> pydantic ---------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", strict=True)


def _yaml_type(tp: Any) -> Any:
    """YAML has lists, not tuples: a `tuple[X, ...]` field is read as a strict
    `list[X]` (the dataclass turns it back into a tuple)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return list[args[0]]  # type: ignore[valid-type]
    if origin in (Union, UnionType):
        return Union[tuple(_yaml_type(a) for a in args)]
    return tp


@lru_cache(maxsize=None)
def _model_for(cls: type, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A strict pydantic model with the fields of dataclass `cls`.

    Nested dataclasses become nested models; a field with a default is
    optional (its default is applied by the dataclass, not by pydantic).
    """
    hints = get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = _yaml_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            tp = _model_for(tp)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        # A default of None is never validated, so an omitted key keeps the
        # dataclass default while an explicit null must fit the real type.
        fields[f.name] = (tp, ...) if required else (tp, None)
    return create_model(f"{cls.__name__}Spec", __config__=_STRICT, **fields)


def _build(cls: type, model: BaseModel, path: Path_, extra: Optional[dict[str, Any]] = None) -> Any:
    """The dataclass for a validated model; ConfigError gets the dotted path."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = dict(extra or {})
    for name in model.model_fields_set:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            value = _build(hints[name], value, path + (name,))
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as exc:
        raise _ConfigErrorAt(path + tuple(exc.field.split(".")), exc.message) from None


class _ConfigErrorAt(Exception):
    def __init__(self, path: Path_, message: str):
        self.path, self.message = path, message


def _pydantic_error(exc: ValidationError, prefix: Path_, lines: _Lines, file: str, valid: dict[Path_, list[str]]) -> SpecError:
    err = exc.errors()[0]
    path = prefix + tuple(str(p) for p in err["loc"])
    key = ".".join(path)
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    if err["type"] == "extra_forbidden":
        options = valid.get(path[:-1], [])
        hint = difflib.get_close_matches(path[-1], options, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return SpecError(file, lines.of(path), key, f"unknown key{suggestion} (valid keys here: {', '.join(options)}){more}")
    if err["type"] == "missing":
        return SpecError(file, lines.of(path[:-1]), key, f"required key is missing{more}")
    return SpecError(file, lines.of(path, key=False), key, f"{err['msg']}, got {err['input']!r}{more}")


def _valid_keys(cls: type, path: Path_ = ()) -> dict[Path_, list[str]]:
    out = {path: [f.name for f in dataclasses.fields(cls)]}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_valid_keys(hints[f.name], path + (f.name,)))
    return out


# --- space ---------------------------------------------------------------------

_DISTRIBUTIONS = {"uniform": Uniform, "loguniform": LogUniform, "int": IntRange, "choice": Choice, "grid": Grid}
_INT_OPTIONS = {"step", "log"}
_FORMS = ("{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} (options step, log), "
          "{choice: [v1, v2, ...]} or {grid: [v1, v2, ...]}, each optionally with when: {earlier.param: value or [values]}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param_spec(raw: Any, err: Any) -> ParamSpec:
    """One `space` entry, e.g. {loguniform: [0.01, 0.5]} or {choice: [0, 1, 2]}."""
    forms = _FORMS
    if not isinstance(raw, dict):
        raise err((), f"expected one of {forms}, got {raw!r}")
    kinds = [k for k in raw if k in _DISTRIBUTIONS]
    unknown = [k for k in raw if k not in _DISTRIBUTIONS and k != "when" and not (k in _INT_OPTIONS and "int" in raw)]
    if unknown:
        raise err((unknown[0],), f"unknown key; expected one of {forms}")
    if len(kinds) != 1:
        raise err((), f"give exactly one distribution, got {kinds or 'none'}; expected one of {forms}")
    kind, arg = kinds[0], raw[kinds[0]]
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg or any(isinstance(v, (list, dict)) for v in arg):
            raise err((kind,), f"expected a non-empty list of scalar values, got {arg!r}")
        if len({repr(v) for v in arg}) != len(arg):
            raise err((kind,), f"values must be distinct, got {arg!r}")
        return (Choice if kind == "choice" else Grid)(tuple(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(_is_number(v) for v in arg)):
        raise err((kind,), f"expected [low, high] as two numbers, got {arg!r}")
    low, high = arg
    if not low < high:
        raise err((kind,), f"expected low < high, got [{low}, {high}]")
    if kind == "int":
        step, log = raw.get("step", 1), raw.get("log", False)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)) or step < 1:
            raise err((kind,), f"expected integer low, high and step >= 1, got [{low}, {high}] step {step}")
        if not isinstance(log, bool) or (log and low < 1):
            raise err(("log",), f"expected true/false, and low >= 1 when true; got {log!r} with low {low}")
        return IntRange(low, high, step, log)
    if kind == "loguniform" and low <= 0:
        raise err((kind,), f"expected low > 0 for a log scale, got {low}")
    return (Uniform if kind == "uniform" else LogUniform)(float(low), float(high))


def _check_space(space_raw: Any, base: Any, base_cls: type, lines: _Lines, file: str) -> dict[str, ParamSpec]:
    if not isinstance(space_raw, dict) or not space_raw:
        raise SpecError(file, lines.of(("space",)), "space", "expected a mapping of at least one parameter, e.g. model.ind: {choice: [0, 1, 2]}")
    paths = field_paths(base)
    hints = _leaf_hints(base_cls)
    space: dict[str, ParamSpec] = {}
    for name, raw in space_raw.items():
        name = str(name)
        loc: Path_ = ("space", name)

        def err(sub: Path_, message: str, loc: Path_ = loc) -> SpecError:
            return SpecError(file, lines.of(loc + sub), ".".join(loc + sub), message)

        if name not in paths:
            hint = difflib.get_close_matches(name, paths, n=1)
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise err((), f"unknown parameter; {suggestion}parameters are dotted paths into base, one of: {', '.join(paths)}")
        spec = _param_spec(raw, err)
        if isinstance(raw, dict) and "when" in raw:
            spec = dataclasses.replace(spec, when=_condition(raw["when"], space, err))
        adapter = TypeAdapter(hints[name], config=ConfigDict(strict=True))
        for value in boundary_values(spec):
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                if isinstance(spec, (Uniform, LogUniform)):
                    raise err((), "uniform and loguniform draw floats but this field does not take floats; "
                                  "use {int: [low, high]} or {choice: [...]}") from None
                raise err((), f"value {value!r} does not fit the field's type: {exc.errors()[0]['msg']}") from None
            try:
                apply_params(base, {name: value})
            except ConfigError as exc:
                raise err((), f"value {value!r} is not allowed: {exc.message}") from None
        space[name] = spec
    _check_combinations(space, base, lines, file)
    return space


MAX_COMBINATIONS = 4096  # beyond this only each parameter alone is checked (above)


def _check_combinations(space: dict[str, ParamSpec], base: Any, lines: _Lines, file: str) -> None:
    """Rules across fields (high_fraction + low_fraction <= 1, a quota above
    the samples per class) show up only when values are combined: try every
    combination of the parameters' boundary values, honouring conditions,
    so a trial cannot fail on a combination the space allows."""
    import itertools

    names = list(space)
    choices = [boundary_values(space[n]) for n in names]
    total = 1
    for c in choices:
        total *= len(c)
    if len(names) < 2 or total > MAX_COMBINATIONS:
        return
    for combo in itertools.product(*choices):
        params: dict[str, Any] = {}
        for name, value in zip(names, combo):
            when = space[name].when
            if when is None or when.holds(params):
                params[name] = value
        try:
            apply_params(base, params)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            first = names[0]
            raise SpecError(file, lines.of(("space", first)), "space",
                            f"the combination {shown} is not allowed: {exc.field}: {exc.message}; narrow the ranges") from None


def _condition(raw: Any, earlier: dict[str, ParamSpec], err: Any) -> Condition:
    """when: {parent: value} or {parent: [values]}; the parent is a parameter listed before this one."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise err(("when",), f"expected one earlier parameter and its value(s), e.g. when: {{train.n_iterations: [2, 3]}}, got {raw!r}")
    parent, values = next(iter(raw.items()))
    parent = str(parent)
    if parent not in earlier:
        listed = ", ".join(earlier) or "none"
        raise err(("when", parent), f"must name a parameter listed before this one in space (listed before: {listed})")
    values = values if isinstance(values, list) else [values]
    spec = earlier[parent]
    if isinstance(spec, (Choice, Grid)):
        bad = [v for v in values if v not in spec.values]
        if bad or not values:
            raise err(("when", parent), f"values {bad or values} are not among {parent}'s values {list(spec.values)}")
    elif isinstance(spec, IntRange):
        bad = [v for v in values if not (isinstance(v, int) and spec.low <= v <= spec.high)]
        if bad or not values:
            raise err(("when", parent), f"values {bad or values} are outside {parent}'s range [{spec.low}, {spec.high}]")
    else:
        raise err(("when", parent), f"{parent} is continuous; a condition needs a choice, grid or int parameter")
    return Condition(parent, tuple(values))


def _check_search(config: SweepConfig, kind: ExperimentKind, lines: _Lines, file: str) -> None:
    """What only the whole spec can tell: the sampler against the space, the
    scheduler's metric, the budget's target."""
    s, space = config.search, config.space

    def fail(path: Path_, message: str) -> SpecError:
        return SpecError(file, lines.of(path, key=False), ".".join(path), message)

    if s.sampler == "grid":
        bad = [n for n, p in space.items() if not isinstance(p, (Choice, Grid))]
        if bad:
            raise fail(("space", bad[0]), "the grid sampler enumerates values: give {grid: [...]} or {choice: [...]}")
        conditional = [n for n, p in space.items() if p.when is not None]
        if conditional:
            raise fail(("space", conditional[0], "when"), "the grid sampler takes no conditional parameters")
        size = grid_size(space)
        if s.num_trials > size:
            raise fail(("search", "num_trials"), f"the grid has {size} configurations; num_trials must be at most {size}")
    else:
        grids = [n for n, p in space.items() if isinstance(p, Grid)]
        if grids:
            raise fail(("space", grids[0]), f"grid values are enumerated by sampler: grid only; with sampler {s.sampler!r} use {{choice: [...]}}")
    if config.scheduler.name != "fifo":
        metric = config.scheduler_metric[0]
        if metric not in kind.epoch_metrics:
            where = ("scheduler", "metric") if config.scheduler.metric else ("search", "metric")
            raise fail(where, f"the {config.scheduler.name} scheduler compares trials epoch by epoch, but {metric!r} is "
                              f"reported only at the end; use one of: {', '.join(m for m in kind.epoch_metrics)}"
                              + (" (set scheduler.metric)" if not config.scheduler.metric else ""))
        if metric not in s.metrics and config.scheduler.mode is None:
            raise fail(("scheduler", "metric"), f"{metric!r} is not an objective, so its direction is unknown: set scheduler.mode (max or min)")


def _leaf_hints(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_hints(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


# --- entry point -------------------------------------------------------------------


def load_sweep(path: str | Path) -> LoadedSweep:
    """Read and validate a sweep file; raise SpecError (one line) if anything is wrong."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(file, None, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, None, "", f"cannot read the file: {exc}") from None
    return parse_sweep(text, file, path)


def parse_sweep(text: str, file: str = "<sweep>", path: Optional[Path] = None) -> LoadedSweep:
    data, lines = _parse(text, file)
    top = _model_for(SweepConfig, exclude=("base", "space"))  # those two are checked below
    try:
        model = top.model_validate({k: v for k, v in data.items() if k not in ("base", "space")})
    except ValidationError as exc:
        raise _pydantic_error(exc, (), lines, file, _valid_keys(SweepConfig)) from None

    name, kind_name = model.name, model.experiment  # type: ignore[attr-defined]
    if kind_name not in experiment_names():
        raise SpecError(file, lines.of(("experiment",), key=False), "experiment",
                        f"unknown experiment kind {kind_name!r}; expected one of: {', '.join(experiment_names())}")
    kind = experiment_kind(kind_name)
    base_raw = data.get("base") or {}
    if not isinstance(base_raw, dict):
        raise SpecError(file, lines.of(("base",)), "base", f"expected a mapping of {kind.config_cls.__name__} fields, got {base_raw!r}")
    try:
        base_model = _model_for(kind.config_cls).model_validate(base_raw)
    except ValidationError as exc:
        raise _pydantic_error(exc, ("base",), lines, file, _valid_keys(kind.config_cls, ("base",))) from None
    try:
        base = _build(kind.config_cls, base_model, ("base",))
    except _ConfigErrorAt as exc:
        raise SpecError(file, lines.of(exc.path, key=False), ".".join(exc.path), exc.message) from None

    space = _check_space(data.get("space"), base, kind.config_cls, lines, file)
    try:
        config = _build(SweepConfig, model, (), extra={"name": name, "experiment": kind_name, "base": base, "space": space})
    except _ConfigErrorAt as exc:
        raise SpecError(file, lines.of(exc.path, key=False), ".".join(exc.path), exc.message) from None
    for metric in config.search.metrics:
        _check_metric(metric, ("search", "metric"), kind, lines, file)
    if config.scheduler.metric is not None:
        _check_metric(config.scheduler.metric, ("scheduler", "metric"), kind, lines, file)
    _check_search(config, kind, lines, file)
    _check_devices(config, lines, file)
    return LoadedSweep(config, text, path or Path(file))


def _check_devices(config: SweepConfig, lines: _Lines, file: str) -> None:
    """A trial sees only the GPUs Ray gives it (as cuda:0, cuda:1, ...): a
    device naming a GPU needs resources.gpu, and a whole number of them to
    name any but the first. Checks the base and every value the space may
    sample for a device."""
    gpus = config.resources.gpu
    candidates: list[tuple[Path_, Any]] = []
    for part in ("train", "search"):
        device = getattr(getattr(config.base, part, None), "device", None)
        if device is not None:
            candidates.append((("base", part, "device"), device))
        spec = config.space.get(f"{part}.device")
        if isinstance(spec, (Choice, Grid)):
            candidates += [(("space", f"{part}.device"), value) for value in spec.values]
    for path, device in candidates:
        if not isinstance(device, str) or not device.startswith("cuda"):
            continue
        where = lines.of(path, key=False)
        suffix = device.partition(":")[2]
        if device != "cuda" and not (device.startswith("cuda:") and suffix.isdigit()):
            raise SpecError(file, where, ".".join(path), f"expected auto, cpu, cuda or cuda:N, got {device!r}")
        if gpus <= 0:
            raise SpecError(file, where, ".".join(path),
                            f"{device} needs resources.gpu > 0: a trial uses only the GPU Ray gives it (or use auto)")
        if int(suffix or 0) >= max(1, int(gpus)):
            raise SpecError(file, where, ".".join(path),
                            f"a trial with resources.gpu {gpus:g} sees its GPU as cuda:0 only; use auto or cuda")


def _check_metric(metric: str, where: Path_, kind: ExperimentKind, lines: _Lines, file: str) -> None:
    line = lines.of(where, key=False)
    key = ".".join(where)
    if metric.startswith("test_") and metric in kind.metrics:
        raise SpecError(file, line, key,
                        f"{metric!r} is measured on the test set, which must never drive selection; use its validation twin {'val_' + metric[5:]!r}")
    if metric not in kind.objective_metrics():
        raise SpecError(file, line, key,
                        f"unknown metric {metric!r} for experiment {kind.name!r}; expected one of: {', '.join(kind.objective_metrics())}")
