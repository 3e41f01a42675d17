"""Sweep engine overhead per trial and share of cores busy, ours against plain Ray Tune.

Runs the same benchmark trainable through two engines, in one process:

* ours: `tuning.runner.launch_sweep` (Optuna TPE through our searcher, a
  journal-backed study, our MLflow parent/child-run callback which logs the
  config, a learning-curve plot and the model of every trial, the sweep table
  and plot on the parent run);
* baseline: plain Ray Tune with `ray.tune.search.optuna.OptunaSearch` (TPE,
  same seed and space) and Ray's `MLflowLoggerCallback` (SQLite tracking URI
  in the run's temporary folder), Tune defaults otherwise.

and two workloads, each at concurrency = cores (one CPU per trial):

* trivial: `--epochs` reports of a computed metric, no real work;
* cpu: a fixed number of single-threaded (torch.set_num_threads(1)) matmuls
  per trial, calibrated before Ray starts to take about `--work-seconds` of
  CPU per trial, split over the epochs.

Both engines run the very same trainable: every epoch it reports its metric
with a checkpoint holding a tiny torch model (`nn.Linear(width, 2)`, as a real
trial reports its training state every epoch), so our engine's per-trial
logging path runs in full: `load_model` rebuilds that tiny module from the
last checkpoint and the tracker logs it as the trial's MLflow model. Each trial
measures its own compute (CPU time of its thread around the work,
`time.thread_time`) and reports it cumulatively as the metric `compute_s`; it
also writes its start and end wall-clock times to a probe file. The
trainable is defined in this script, so Ray pickles it by value and a worker
imports only torch and ray.tune (a real trial's worker also imports its kind's
module in tuning.kinds, tuning.replicates, cnnf and fl: its start-up costs a
little more).

Figures, per engine and workload (each in a fresh Ray session started with
`ray.init(address="local", num_cpus=cores, include_dashboard=False)`, which
`launch_sweep` joins instead of starting its own):

* wall: the sweep call alone (`launch_sweep`, or building and fitting the
  Tuner); `+init` adds this session's `ray.init`, which a CLI run also pays;
* overhead/trial = (wall - sum(compute) / concurrency) / trials, with and
  without `ray.init`; the PASS/FAIL verdict uses the figure without it;
* cores busy: CPU time of all the sweep's processes (this driver and its
  descendants: Ray's GCS and raylet, the trial workers; read from /proc every
  0.25 s) over cores x wall, between the first trial's start and the last
  trial's end; `machine busy` is the same for every process on the machine
  (/proc/stat): above `cores busy` means other load shared the cores;
  `trial share` is the trials' own compute over the same window, the useful
  part of `cores busy`;
* driver CPU: CPU seconds of this (driver) process during the sweep, per trial.

Targets (the issue): at most 0.5 s amortised overhead per trial; at least 90 %
of cores busy during the CPU-bound sweep. Driver-side imports (torch, Ray,
Optuna, MLflow, matplotlib, mlflow.pytorch) are warmed before any timing and
printed separately: a one-sweep CLI process pays them once on top. Other
load on a shared machine slows the trials and the driver; the load average
before and after each run is printed, so run it alone.

The host (CPU model, avx2 / avx512f / avx512_bf16 / amx flags, CPU count)
is printed first and stored under "host" in the JSON (read before torch is
imported, whose import time is one of the figures). Nothing here runs in
bf16: no rows to skip on a CPU without native bf16.

Diagnostics: `--breakdown` wraps Tune's, the searcher's, the callbacks' and
MLflow's driver-side functions at run time (both engines) and prints where
the driver's time goes plus one trial's timeline (actor start, report calls,
completion); `--what-if reuse_actors no_model_log ...` adds rows for our engine
with one cost changed at run time (nothing is edited); `--profile DIR` writes
a cProfile of our engine's driver per workload.

The full benchmark, a smoke run (`--quick`: 4 trials, 2 epochs, ~0.5 s of
work each; figures meaningless), and a diagnostic run:

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 16] [--epochs 4] [--work-seconds 4] [--json PATH]
    .venv/bin/python benchmarks/sweep_overhead.py --quick --workloads cpu
    .venv/bin/python benchmarks/sweep_overhead.py --engines ours --breakdown --what-if reuse_actors reuse_actors,no_model_log,no_trial_plot
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import functools
import json
import math
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import print_host  # noqa: E402

KIND = "bench_sweep_overhead"
METRIC = "val_acc"
WIDTHS = (4, 8, 16)
TARGET_OVERHEAD_S = 0.5
TARGET_BUSY = 0.90
try:  # the engine tells Optuna a trial whose last report lacks this key as pruned (and logs no model for it)
    from tuning.experiments import FINAL_KEY
except ImportError:
    FINAL_KEY = "final_report"


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark kind's base config; `x` and `width` are swept."""

    workload: str = "trivial"  # trivial | cpu
    epochs: int = 4
    iters_per_epoch: int = 0  # matmuls per epoch (cpu workload)
    matmul_size: int = 512
    x: float = 0.5
    width: int = 8  # the tiny model's input width
    probe_dir: str = ""  # each trial writes its start/end times and compute here


# --- the trainable (both engines), pickled by value when run as __main__ ----------


def bench_trainable(config: dict[str, Any], *, base: BenchConfig, cpus: float = 1.0, gpus: float = 0.0,
                    stage_dir: Optional[str] = None, **_: Any) -> None:
    """Report `epochs` times (metric, cumulative compute, checkpoint with a tiny model)."""
    import torch
    from ray import tune

    started = time.time()
    # flat fields: what apply_params does for our engine ("_" keys are its bookkeeping)
    cfg = replace(base, **{k: v for k, v in config.items() if not k.startswith("_")})
    torch.set_num_threads(1)
    torch.manual_seed(int(cfg.x * 1e6) + cfg.width)
    model = torch.nn.Linear(cfg.width, 2)
    n = cfg.matmul_size
    a = torch.randn(n, n) / math.sqrt(n) if cfg.iters_per_epoch else None
    compute_cpu = compute_wall = report_s = 0.0
    for epoch in range(1, cfg.epochs + 1):
        c0, w0 = time.thread_time(), time.perf_counter()
        acc = _epoch_work(cfg, a, epoch)
        compute_cpu += time.thread_time() - c0
        compute_wall += time.perf_counter() - w0
        metrics = {"epoch": epoch, METRIC: acc, "compute_s": compute_cpu, "compute_wall_s": compute_wall}
        if epoch == cfg.epochs:
            metrics[FINAL_KEY] = True
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model.state_dict(), Path(tmp) / "model.pt")
            r0 = time.perf_counter()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            report_s += time.perf_counter() - r0
    if cfg.probe_dir:
        probe = {"start": started, "end": time.time(), "compute_s": compute_cpu, "compute_wall_s": compute_wall,
                 "report_s": report_s, "pid": os.getpid(), "trial_id": tune.get_context().get_trial_id()}
        (Path(cfg.probe_dir) / f"{uuid.uuid4().hex}.json").write_text(json.dumps(probe))


def _epoch_work(cfg: BenchConfig, a: Any, epoch: int) -> float:
    """The epoch's metric; for the cpu workload after `iters_per_epoch` matmuls."""
    checksum = 0.0
    if cfg.iters_per_epoch:
        b = a.clone()
        for _ in range(cfg.iters_per_epoch):
            b = a @ b  # a is scaled to keep b bounded
        checksum = float(b[0, 0])
    base = 1.0 - 0.5 * math.exp(-epoch * (0.2 + cfg.x)) - 0.02 * abs(math.log2(cfg.width) - 3)
    return max(0.0, min(1.0, base + 1e-9 * checksum))


def load_bench_model(checkpoint_dir: Path, cfg: BenchConfig) -> tuple[Any, Any]:
    """The tiny model from the trial's last checkpoint and an input example."""
    import numpy as np
    import torch

    model = torch.nn.Linear(cfg.width, 2)
    model.load_state_dict(torch.load(Path(checkpoint_dir) / "model.pt", weights_only=True))
    model.eval()
    return model, np.zeros((1, cfg.width), dtype=np.float32)


def register_kind() -> None:
    from tuning.kinds import EXPERIMENTS, ExperimentKind, register_experiment

    if KIND in EXPERIMENTS:
        return
    types = {f.name: str(f.type) for f in fields(ExperimentKind)}
    extra = {"epochs_path": "epochs"} if "epochs_path" in types else {}
    # This kind reports no final metrics. ExperimentKind.final_metrics was a tuple of names and is now
    # a function of the config returning them (tuning refactor); give whichever form this checkout has.
    no_final: Any = (lambda cfg: ()) if "Callable" in types["final_metrics"] else ()
    register_experiment(ExperimentKind(
        name=KIND, trainable=bench_trainable, config_cls=BenchConfig,
        epoch_metrics=(METRIC, "compute_s", "compute_wall_s"), final_metrics=no_final,
        preflight=lambda cfg: None, load_model=load_bench_model,
        describe_eval=lambda cfg: f"benchmark metric, {cfg.workload} workload, no evaluation", **extra,
    ))


# --- measurement helpers ----------------------------------------------------------


def _proc_stat() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [float(v) for v in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal  # guest time is already in user
    return busy, busy + idle + iowait


class TreeCpu:
    """CPU seconds (user + system) used so far by `root` and every process
    descended from it: this benchmark's driver, Ray's GCS and raylet, the trial
    workers. A process that exits keeps its last sampled time (Ray reaps its
    workers without adding their times to its own children's times); what it
    used after that sample, at most one sampling period, is missed."""

    def __init__(self, root: int):
        self.root = root
        self.outside: set[int] = set()  # never descend from root: not read again
        self.last: dict[int, int] = {}  # ticks of each process ever seen in the tree

    def read(self) -> float:
        current: dict[int, tuple[int, int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in self.outside:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            rest = data[data.rindex(b")") + 2:].split()  # fields from 3 (state) on
            current[int(name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
        children: dict[int, list[int]] = defaultdict(list)
        for pid, (ppid, _) in current.items():
            children[ppid].append(pid)
        tree, stack = set(), [self.root]
        while stack:
            pid = stack.pop()
            if pid not in tree:
                tree.add(pid)
                stack += children.get(pid, [])
        for pid, (_, ticks) in current.items():
            if pid in tree or pid in self.last:  # a worker reparented after its parent exited stays counted
                self.last[pid] = ticks
            else:
                self.outside.add(pid)
        return sum(self.last.values()) / CLOCK_TICKS


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Samples /proc every `period` s in a thread: the machine's busy and total
    CPU time (/proc/stat) and this process tree's CPU time; shares over any window."""

    def __init__(self, cores: int, period: float = 0.25):
        self.cores, self.period = cores, period
        self.tree = TreeCpu(os.getpid())
        self.samples: list[tuple[float, float, float, float]] = []  # time, machine busy s, machine total s, tree s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        busy, total = _proc_stat()
        self.samples.append((time.time(), busy / CLOCK_TICKS, total / CLOCK_TICKS, self.tree.read()))

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.period):
                self._sample()
                return

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _at(self, t: float) -> tuple[float, ...]:
        s = self.samples
        if t <= s[0][0]:
            return s[0][1:]
        for x0, x1 in zip(s, s[1:]):
            if x0[0] <= t <= x1[0]:
                f = (t - x0[0]) / (x1[0] - x0[0]) if x1[0] > x0[0] else 0.0
                return tuple(a + f * (b - a) for a, b in zip(x0[1:], x1[1:]))
        return s[-1][1:]

    def busy_share(self, start: float, end: float) -> float:
        """Share of all the machine's CPUs busy (any process) between start and end."""
        b0, a0, _ = self._at(start)
        b1, a1, _ = self._at(end)
        return (b1 - b0) / (a1 - a0) if a1 > a0 else float("nan")

    def tree_share(self, start: float, end: float) -> float:
        """CPU time of this benchmark's processes over cores x (end - start)."""
        _, _, c0 = self._at(start)
        _, _, c1 = self._at(end)
        return (c1 - c0) / (self.cores * (end - start)) if end > start else float("nan")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def calibrate(matmul_size: int, seconds: float = 1.0) -> float:
    """CPU seconds of one single-threaded matmul of the benchmark's size."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(matmul_size, matmul_size) / math.sqrt(matmul_size)
        b = a.clone()
        for _ in range(3):
            b = a @ b
        best = math.inf
        for _ in range(3):
            n, c0 = 0, time.thread_time()
            while time.thread_time() - c0 < seconds / 3:
                b = a @ b
                n += 1
            best = min(best, (time.thread_time() - c0) / n)
        return best
    finally:
        torch.set_num_threads(threads)


def warm_imports() -> dict[str, float]:
    """Import what each engine's driver imports lazily; seconds per group."""
    groups = {
        "common (torch, ray.tune, optuna, mlflow)": ["torch", "ray", "ray.tune", "optuna", "mlflow"],
        "ours (tuning.*, cnnf, fl, mlflow.pytorch, matplotlib)": [
            "tuning.runner", "tuning.kinds.cnnf", "tuning.kinds.fl", "tuning.replicates", "tuning.tracking", "tuning.searchers", "mlflow.pytorch", "matplotlib.pyplot"],
        "baseline (ray.tune.search.optuna, ray.air.integrations.mlflow)": [
            "ray.tune.search.optuna", "ray.air.integrations.mlflow"],
    }
    import importlib

    out = {}
    for name, modules in groups.items():
        t0 = time.perf_counter()
        for m in modules:
            importlib.import_module(m)
        out[name] = time.perf_counter() - t0
    return out


class Breakdown:
    """Wraps driver-side functions at run time, sums their wall time and keeps
    a timeline per trial (Tune's own functions: the same for both engines)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.events: dict[str, dict[str, float]] = defaultdict(dict)  # trial id -> event -> time.time()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str, event: Optional[str] = None) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            trial = kwargs.get("trial") or next((a for a in args if hasattr(a, "trial_id") and hasattr(a, "config")), None)
            if event and trial is not None:
                self.events[trial.trial_id].setdefault(event, time.time())
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1
                if event and trial is not None:
                    self.events[trial.trial_id].setdefault(f"{event}_done", time.time())

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def install(self, engine: str) -> None:
        from ray.tune.callback import CallbackList
        from ray.tune.execution.tune_controller import TuneController
        from ray.tune.search.search_generator import SearchGenerator

        self.wrap(TuneController, "step", "Tune controller step (everything below runs inside)")
        self.wrap(TuneController, "_schedule_trial_actor", "Tune: schedule a trial's actor", event="actor_scheduled")
        self.wrap(TuneController, "save_to_dir", "Tune: experiment-state snapshot (save_to_dir)")
        self.wrap(TuneController, "_process_trial_save", "Tune: register a reported checkpoint")
        self.wrap(CallbackList, "on_trial_start", "callbacks: on_trial_start", event="callbacks_start")
        self.wrap(CallbackList, "on_trial_result", "callbacks: on_trial_result")
        self.wrap(CallbackList, "on_trial_complete", "callbacks: on_trial_complete", event="callbacks_complete")
        self.wrap(SearchGenerator, "next_trial", "searcher: next_trial (suggest)")
        self.wrap(SearchGenerator, "on_trial_result", "searcher: on_trial_result")
        self.wrap(SearchGenerator, "on_trial_complete", "searcher: on_trial_complete")
        from mlflow import MlflowClient

        for name in ("create_run", "log_batch", "log_metric", "log_param", "log_artifact", "log_artifacts", "set_terminated", "set_tag"):
            self.wrap(MlflowClient, name, f"MlflowClient.{name} (anywhere)")
        if engine != "ours":
            return
        import tuning.tracking as tracking

        # Public names only: the tracker's methods and the functions the callbacks call.
        # inside callbacks: on_trial_complete
        self.wrap(tracking, "log_torch_model", "  ours, in on_trial_complete: log_torch_model (mlflow.pytorch)")
        self.wrap(tracking, "plot_trial", "  ours, in on_trial_complete: plot_trial (matplotlib)")
        self.wrap(tracking.SweepTracker, "__init__", "ours: SweepTracker.__init__ (MLflow store)")
        self.wrap(tracking.SweepTracker, "start_parent", "ours: SweepTracker.start_parent")
        self.wrap(tracking.SweepTracker, "log_parent_files", "ours: SweepTracker.log_parent_files (Optuna plots)")
        self.wrap(tracking.SweepTracker, "finish_parent", "ours: SweepTracker.finish_parent (trial table, sweep plot)")

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def timeline(self, probes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """Median, min and max over trials of where a trial's time goes, seen from the driver and the trial."""
        import statistics

        parts: dict[str, list[float]] = defaultdict(list)
        for p in probes:
            e = self.events.get(p.get("trial_id", ""), {})
            if "actor_scheduled" in e:
                parts["actor scheduled -> trainable running (process start, imports)"].append(p["start"] - e["actor_scheduled"])
            parts["trainable body: compute"].append(p["compute_wall_s"])
            parts["trainable body: in tune.report (checkpoint upload, wait for driver)"].append(p["report_s"])
            if "callbacks_complete" in e:
                parts["trainable returned -> driver on_trial_complete"].append(e["callbacks_complete"] - p["end"])
                parts["driver on_trial_complete callbacks"].append(e["callbacks_complete_done"] - e["callbacks_complete"])
        return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in parts.items() if v}


# --- what-ifs: our engine with one of its costs changed at run time (nothing edited) ---


def _patch(owner: Any, attr: str, value: Any, undo: list[Callable[[], None]]) -> None:
    if not hasattr(owner, attr):
        raise SystemExit(f"--what-if: {getattr(owner, '__name__', owner)}.{attr} does not exist (the engine changed?)")
    original = getattr(owner, attr)
    setattr(owner, attr, value)
    undo.append(lambda: setattr(owner, attr, original))


def _with_keywords(cls: Any, **fixed: Any) -> Callable[..., Any]:
    return lambda *args, **kwargs: cls(*args, **{**kwargs, **fixed})


def _what_if_reuse_actors(undo: list[Callable[[], None]]) -> None:
    """TuneConfig(reuse_actors=True): a trial runs in the previous trial's worker process."""
    from ray import tune

    _patch(tune, "TuneConfig", _with_keywords(tune.TuneConfig, reuse_actors=True), undo)


def _what_if_no_model_log(undo: list[Callable[[], None]]) -> None:
    """No mlflow.pytorch.log_model per trial (tracking.log_torch_model does nothing)."""
    import tuning.tracking as tracking

    _patch(tracking, "log_torch_model", lambda *args, **kwargs: None, undo)


def _what_if_no_trial_plot(undo: list[Callable[[], None]]) -> None:
    """No matplotlib learning-curve figure per trial (an empty trial.png is logged instead)."""
    import tuning.tracking as tracking

    _patch(tracking, "plot_trial", lambda history, kind, title, note, path, *a, **k: Path(path).write_bytes(b""), undo)


def _what_if_no_keep(undo: list[Callable[[], None]]) -> None:
    """CheckpointConfig without num_to_keep: no experiment-state snapshot forced at every checkpoint."""
    from ray import tune

    original = tune.CheckpointConfig
    _patch(tune, "CheckpointConfig", lambda *args, **kwargs: original(*args, **{k: v for k, v in kwargs.items() if k != "num_to_keep"}), undo)


WHAT_IFS: dict[str, Callable[[list[Callable[[], None]]], None]] = {
    "reuse_actors": _what_if_reuse_actors, "no_model_log": _what_if_no_model_log,
    "no_trial_plot": _what_if_no_trial_plot, "no_keep": _what_if_no_keep,
}


# --- the two engines --------------------------------------------------------------


def _space_ours() -> dict[str, Any]:
    from tuning.space import Choice, Uniform

    return {"x": Uniform(0.0, 1.0), "width": Choice(WIDTHS)}


def run_ours(base: BenchConfig, n_trials: int, concurrency: int, out: Path) -> dict[str, Any]:
    from tuning.config import ResourcesConfig, SearchConfig, SweepConfig
    from tuning.runner import launch_sweep

    cfg = SweepConfig(
        name=f"overhead-{base.workload}", experiment=KIND, base=base, space=_space_ours(),
        search=SearchConfig(metric=METRIC, mode="max", sampler="tpe", num_trials=n_trials, max_concurrent=concurrency),
        resources=ResourcesConfig(cpu=1), output_dir=str(out), seed=0,
    )
    spec_text = f"# benchmarks/sweep_overhead.py, built in code\n{json.dumps(asdict(base), indent=2)}\n"
    outcome = launch_sweep(cfg, spec_text, spec_path=None)
    with (outcome.output_dir / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {"status": outcome.status, "finished": outcome.n_finished,
            "compute": [float(r["compute_s"]) for r in rows if r.get("compute_s")]}


def run_baseline(base: BenchConfig, n_trials: int, concurrency: int, out: Path) -> dict[str, Any]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space={"x": FloatDistribution(0.0, 1.0), "width": CategoricalDistribution(WIDTHS)},
        metric=METRIC, mode="max", sampler=optuna.samplers.TPESampler(seed=0),
    )
    trainable = tune.with_resources(tune.with_parameters(bench_trainable, base=base, cpus=1, gpus=0.0, stage_dir=None), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n_trials, max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(out), verbose=1,
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{out / 'mlflow.db'}", experiment_name=f"overhead-{base.workload}")],
        ),
    )
    grid = tuner.fit()
    done = [r for r in grid if r.error is None]
    return {"status": "FINISHED" if len(done) == n_trials else "FAILED", "finished": len(done),
            "compute": [float(r.metrics["compute_s"]) for r in done if "compute_s" in r.metrics]}


ENGINES = {"ours": run_ours, "baseline": run_baseline}


def measure(engine: str, base: BenchConfig, n_trials: int, cores: int, work: Path,
            breakdown: bool, profile: Optional[Path], what_if: tuple[str, ...] = ()) -> dict[str, Any]:
    """One sweep in a fresh Ray session; returns its row."""
    import ray

    label = "+".join((engine, *what_if))
    out = work / f"{label}-{base.workload}"
    probes = out / "probes"
    probes.mkdir(parents=True)
    base = replace(base, probe_dir=str(probes))
    env = dict(os.environ)
    load_before = _loadavg()
    timer = Breakdown() if breakdown else None
    profiler = cProfile.Profile() if profile and engine == "ours" else None
    undo: list[Callable[[], None]] = []
    try:
        for name in what_if:
            WHAT_IFS[name](undo)
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        init_s = time.perf_counter() - t0
        if timer:
            timer.install(engine)
        with CpuSampler(cores) as sampler:
            cpu0, t1, call_start = time.process_time(), time.perf_counter(), time.time()
            if profiler:
                profiler.enable()
            try:
                result = ENGINES[engine](base, n_trials, cores, out)
            finally:
                if profiler:
                    profiler.disable()
            wall, call_end = time.perf_counter() - t1, time.time()
            driver_cpu = time.process_time() - cpu0
    finally:
        if timer:
            timer.uninstall()
        for u in reversed(undo):
            u()
        t2 = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - t2
        os.environ.clear()
        os.environ.update(env)  # launch_sweep sets Tune variables for its process

    trials = [json.loads(p.read_text()) for p in sorted(probes.glob("*.json"))]
    compute = sum(result["compute"])
    if not trials:  # no trial ran to its end: nothing to measure busy shares over
        raise SystemExit(f"{label} / {base.workload}: no trial finished (status {result['status']}); see the log above")
    start, end = min(t["start"] for t in trials), max(t["end"] for t in trials)
    window = end - start
    row: dict[str, Any] = {
        "engine": label, "what_if": list(what_if), "workload": base.workload, "trials": n_trials, "finished": result["finished"],
        "status": result["status"], "concurrency": cores, "epochs": base.epochs,
        "ray_init_s": init_s, "ray_shutdown_s": shutdown_s, "wall_s": wall, "wall_with_init_s": wall + init_s,
        "compute_s": compute, "compute_probe_s": sum(t["compute_s"] for t in trials),
        "compute_wall_s": sum(t["compute_wall_s"] for t in trials),
        "overhead_per_trial_s": (wall - compute / cores) / n_trials,
        "overhead_per_trial_with_init_s": (wall + init_s - compute / cores) / n_trials,
        "driver_cpu_s": driver_cpu, "driver_cpu_per_trial_s": driver_cpu / n_trials,
        "window_s": window, "cores_busy": sampler.tree_share(start, end), "machine_busy": sampler.busy_share(start, end),
        "trial_compute_share": sum(t["compute_s"] for t in trials) / (window * cores) if window > 0 else float("nan"),
        "cores_busy_whole_call": sampler.tree_share(call_start, call_end),
        "load_before": load_before, "load_after": _loadavg(),
    }
    missed = [name for name, failed in (
        ("trials", row["finished"] != n_trials),
        ("ovh", row["overhead_per_trial_s"] > TARGET_OVERHEAD_S),
        ("busy", base.workload == "cpu" and row["cores_busy"] < TARGET_BUSY),
    ) if failed]
    row["verdict"] = f"FAIL({','.join(missed)})" if missed else "PASS"
    if timer:
        row["timeline"] = timer.timeline(trials)
        row["breakdown"] = {k: {"seconds": timer.seconds[k], "calls": timer.calls[k], "per_trial_s": timer.seconds[k] / n_trials}
                            for k in sorted(timer.seconds, key=lambda k: -timer.seconds[k])}
    if profiler:
        profile.mkdir(parents=True, exist_ok=True)
        path = profile / f"{label}-{base.workload}.prof"
        profiler.dump_stats(str(path))
        row["profile"] = str(path)
    return row


# --- report -----------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("engine", "workload", "trials", "conc", "wall s", "+init s", "compute s", "ovh/trial s", "+init", "driver cpu/trial s",
            "cores busy %", "machine busy %", "trial share %", "verdict")
    lines = [head]
    for r in rows:
        busy = f"{100 * r['cores_busy']:.1f}"
        lines.append((r["engine"], r["workload"], f"{r['finished']}/{r['trials']}", str(r["concurrency"]), f"{r['wall_s']:.1f}",
                      f"{r['wall_with_init_s']:.1f}", f"{r['compute_s']:.1f}", f"{r['overhead_per_trial_s']:.2f}",
                      f"{r['overhead_per_trial_with_init_s']:.2f}", f"{r['driver_cpu_per_trial_s']:.2f}", busy,
                      f"{100 * r['machine_busy']:.1f}", f"{100 * r['trial_compute_share']:.1f}", r["verdict"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print("  ".join(c.rjust(w) if j > 1 and j < len(head) - 1 else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per sweep (default 16)")
    parser.add_argument("--epochs", type=int, default=4, help="reports (with a checkpoint) per trial (default 4)")
    parser.add_argument("--work-seconds", type=float, default=4.0, help="CPU seconds of matmuls per cpu-bound trial (default 4)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Ray num_cpus and concurrency (default: all)")
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=["ours", "baseline"])
    parser.add_argument("--workloads", nargs="+", choices=["trivial", "cpu"], default=["trivial", "cpu"])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 4 trials, 2 epochs, 0.5 s work (about a minute)")
    parser.add_argument("--what-if", nargs="+", default=[], metavar="NAME[,NAME]",
                        help=f"extra rows: our engine with these changes patched in at run time ({', '.join(WHAT_IFS)}); "
                             "comma-join names to combine them in one row")
    parser.add_argument("--breakdown", action="store_true", help="time engine functions on the driver (both engines) and print a per-trial timeline")
    parser.add_argument("--profile", type=Path, help="write a cProfile of our engine's driver per workload into this folder")
    parser.add_argument("--work-dir", type=Path, help="keep the sweeps' folders here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    what_ifs = [tuple(n for n in w.split(",") if n) for w in args.what_if]
    unknown = {n for w in what_ifs for n in w} - set(WHAT_IFS)
    if unknown:
        parser.error(f"--what-if: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(WHAT_IFS)}")
    if args.quick:
        args.trials, args.epochs, args.work_seconds = 4, 2, 0.5
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    host = print_host(with_torch=False)  # before warm_imports, which times importing torch
    print(f"load average before: {_loadavg()}  (cores: {os.cpu_count()}, Ray num_cpus / concurrency: {args.cores})", flush=True)
    imports = warm_imports()
    register_kind()
    matmul_s = calibrate(512)
    per_epoch = max(1, round(args.work_seconds / args.epochs / matmul_s))
    print(f"calibration: one 512x512 matmul = {1e3 * matmul_s:.2f} ms of CPU; cpu workload = {per_epoch} matmuls x "
          f"{args.epochs} epochs per trial (~{per_epoch * args.epochs * matmul_s:.2f} s)", flush=True)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    rows: list[dict[str, Any]] = []
    try:
        for workload in args.workloads:
            base = BenchConfig(workload=workload, epochs=args.epochs, iters_per_epoch=per_epoch if workload == "cpu" else 0)
            runs = [(engine, ()) for engine in args.engines] + [("ours", w) for w in what_ifs]
            for engine, what_if in runs:
                label = "+".join((engine, *what_if))
                print(f"\n=== {label} / {workload}: {args.trials} trials, concurrency {args.cores} ===", flush=True)
                row = measure(engine, base, args.trials, args.cores, work, args.breakdown, args.profile, what_if)
                rows.append(row)
                print(f"=== {label} / {workload}: wall {row['wall_s']:.1f} s, overhead {row['overhead_per_trial_s']:.2f} s/trial, "
                      f"cores busy {100 * row['cores_busy']:.1f} % (load {row['load_before']} -> {row['load_after']})", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print("\nDriver imports, warmed before timing (a one-sweep CLI process pays them once on top):")
    for name, s in imports.items():
        print(f"  {name}: {s:.1f} s")
    print(f"\nSweep overhead per trial: overhead = (wall - sum(compute) / concurrency) / trials, compute = the trials' thread CPU\n"
          f"time, '+init' adds ray.init. From the first trial's start to the last trial's end: cores busy = CPU time of all the\n"
          f"sweep's processes (driver, Ray, workers) / (cores x wall); machine busy = every process on the machine (/proc/stat;\n"
          f"above cores busy: other load); trial share = the trials' own compute / (cores x wall).\n"
          f"Targets: <= {TARGET_OVERHEAD_S} s/trial (without ray.init), >= {100 * TARGET_BUSY:.0f} % cores busy for the cpu workload;\n"
          f"FAIL(...) names what missed: ovh (overhead), busy (cores busy), trials (not every trial finished).\n")
    print_table(rows)
    for name in dict.fromkeys(n for w in what_ifs for n in w):
        print(f"  +{name}: {WHAT_IFS[name].__doc__}")
    by = {(r["engine"], r["workload"]): r for r in rows}
    ratios = {}
    for workload in args.workloads:
        ours, plain = by.get(("ours", workload)), by.get(("baseline", workload))
        if ours and plain:
            ratios[workload] = plain["overhead_per_trial_s"] / ours["overhead_per_trial_s"] if ours["overhead_per_trial_s"] > 0 else math.inf
            print(f"{workload}: baseline / ours overhead per trial = {plain['overhead_per_trial_s']:.2f} / "
                  f"{ours['overhead_per_trial_s']:.2f} = {ratios[workload]:.2f}x (with ray.init: "
                  f"{plain['overhead_per_trial_with_init_s']:.2f} / {ours['overhead_per_trial_with_init_s']:.2f})")
    for r in rows:
        if "breakdown" in r:
            print(f"\n{r['engine']} / {r['workload']}: driver wall time in engine functions (per trial: over {r['trials']} trials)")
            for name, b in r["breakdown"].items():
                print(f"  {name:<66} {b['seconds']:7.2f} s  {b['calls']:5d} calls  {b['per_trial_s']:6.3f} s/trial")
            print(f"{r['engine']} / {r['workload']}: one trial's timeline, median (min - max) over trials")
            for name, v in r["timeline"].items():
                print(f"  {name:<72} {v['median']:6.2f} s ({v['min']:.2f} - {v['max']:.2f})")
        if "profile" in r:
            print(f"\nours / {r['workload']}: top of the driver profile ({r['profile']}, cumulative)")
            pstats.Stats(r["profile"]).sort_stats("cumulative").print_stats(25)
    if args.json:
        args.json.write_text(json.dumps({
            "host": host, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpu_count": os.cpu_count(), "matmul_512_cpu_s": matmul_s, "matmuls_per_epoch": per_epoch,
            "imports_s": imports, "rows": rows, "baseline_over_ours": ratios,
        }, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
