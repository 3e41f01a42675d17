"""Trainables: rebuild the typed config from the sampled values, call the
library, report. Ray is imported inside the functions so that registering
the kinds (and `sweep validate`) stays free of Ray.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from cnnf.config import ExperimentConfig
from cnnf.data import check_available, dataset_info, load_splits
from cnnf.evaluate import evaluate
from cnnf.suite import Suite, suite_from_config
from cnnf.models import InferenceModel
from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport, mean_std
from cnnf.tables import checks_table, cnnf_table
from cnnf.train import EpochResult, TrainState, build_model, fit, load_train_state, save_train_state, transfer_source

from fl.config import FLConfig, reduced_at_budget
from fl.metrics import SPLITS as FL_SPLITS
from fl.metrics import ReducedBaseline, comparison_metrics
from fl.metrics import metric_names as fl_metric_names
from fl.pipeline import (centre_images, centre_margins, centre_of, continue_training, evaluate_model, fl_suites, retrain,
                         scored_model, search_again, search_margins, train_base)
from fl.plots import class_centres, class_robustness, margin_heatmap
from fl.search import Margins
from cnnf.stages import cached_stage, config_key
from fl.stats import MarginStats, margin_stats
from fl.tables import adjacent_share_table, centre_table, fl_table, robustness_table
from tuning.cluster import trial_placement
from tuning.experiments import FINAL_KEY, REPORT_DIR, ExperimentKind, register_experiment
from tuning.lockstep import run_lockstep
from tuning.plots import trial_title
from tuning.space import apply_params

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
EVAL_JSON = "eval.json"  # in report/: [[val, test] EvalReport dicts] per replicate


@dataclass
class ReplicateOutcome:
    """The end of one replicate (one seed) of a trial."""

    metrics: dict[str, float]  # final metrics, including the last epoch's
    extra: dict[str, Any] = field(default_factory=dict)  # JSON for the checkpoint's config.json
    write_report: Optional[Callable[[Path], None]] = None  # files for the run's report/ artifacts


def _state_file(replicate: int) -> str:
    return STATE_FILE if replicate == 0 else f"state_r{replicate}.pt"


def _report(metrics: dict[str, float], states: list[Optional[TrainState]], config: Any, extra: dict[str, Any] | None = None,
            write_report: Callable[[Path], None] | None = None, write_root: Callable[[Path], None] | None = None) -> None:
    """Report metrics with a checkpoint holding every replicate's training
    state; `write_report` may add files under the checkpoint's REPORT_DIR,
    which the tracker logs as run artifacts."""
    from ray import tune

    metrics = {**metrics, **trial_placement()}  # where the trial ran: its MLflow run's tags
    with tempfile.TemporaryDirectory() as tmp:
        for i, state in enumerate(states):
            if state is not None:
                save_train_state(state, Path(tmp) / _state_file(i))
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps({"config": asdict(config), **(extra or {})}, indent=2, default=str))
        if write_report is not None:
            (Path(tmp) / REPORT_DIR).mkdir()
            write_report(Path(tmp) / REPORT_DIR)
        if write_root is not None:
            write_root(Path(tmp))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def mean_over_replicates(per_replicate: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every numeric metric over the replicates and, with two or
    more, its sample std as `<name>_std`."""
    if len(per_replicate) == 1:
        return dict(per_replicate[0])
    out: dict[str, float] = {}
    for key in per_replicate[0]:
        values = [m[key] for m in per_replicate if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)]
        if len(values) != len(per_replicate):
            continue
        out[key], std = mean_std(values)
        if key != "epoch":
            out[f"{key}_std"] = std
    return out


def _replicates_table(seeds: list[int], per_replicate: list[dict[str, float]], metrics: list[str]) -> str:
    shown = [m for m in metrics if all(m in r for r in per_replicate)]
    lines = ["# Replicates\n", "One row per seed; the trial's metrics are the mean (std in `<metric>_std`).\n",
             "| seed | " + " | ".join(shown) + " |", "|---:|" + "---:|" * len(shown)]
    lines += [f"| {seed} | " + " | ".join(f"{r[m]:.4f}" for m in shown) + " |" for seed, r in zip(seeds, per_replicate)]
    return "\n".join(lines) + "\n"


def run_replicates(cfg: Any, n_replicates: int, seeded: Callable[[Any, int], Any], epochs: int,
                   run_one: Callable[[Any, Optional[TrainState], Callable[[EpochResult, TrainState], None]], ReplicateOutcome],
                   resume: list[Optional[TrainState]], figure: Optional[tuple[str, str]] = None) -> None:
    """Train `n_replicates` seeds of one configuration in lockstep, report the
    mean (and std) of each epoch with a checkpoint of all their states, then
    the mean of their final metrics with FINAL_KEY set. figure: (experiment
    kind, title) of the trial figure drawn into the final checkpoint.

    The last epoch is not reported on its own: its metrics go with the final
    report, so a trial reports exactly once per epoch (what the schedulers count).
    """
    configs = [seeded(cfg, i) for i in range(n_replicates)]

    # The learning curves as reported: from the checkpoint's history on a restart, then each round.
    history = [mean_over_replicates([_epoch_metrics(r) for r in results])
               for results in zip(*[state.history if state is not None else [] for state in resume])]

    states = list(resume)  # each replicate's latest training state: the checkpoint's, then each round's

    def on_round(items: list[tuple[EpochResult, TrainState]]) -> None:
        states[:] = [s for _, s in items]
        if items[0][0].epoch < epochs:
            metrics = mean_over_replicates([_epoch_metrics(r) for r, _ in items])
            history.append(metrics)
            _report(metrics, [s for _, s in items], cfg)

    def job(i: int) -> Callable[[Callable[[Any], None]], ReplicateOutcome]:
        return lambda step: run_one(configs[i], resume[i], lambda result, state: step((result, state)))

    outcomes = run_lockstep([job(i) for i in range(n_replicates)], on_round)
    first = outcomes[0]
    metrics = {**mean_over_replicates([o.metrics for o in outcomes]), FINAL_KEY: True}
    extra = dict(first.extra)
    evals = [o.extra.get("eval") for o in outcomes]

    def write(folder: Path, inner: Optional[Callable[[Path], None]] = first.write_report) -> None:
        if inner is not None:
            inner(folder)
        if all(e is not None for e in evals):  # the evaluation reports of every replicate, for `sweep report`
            (folder / EVAL_JSON).write_text(json.dumps(evals, default=str))

    if n_replicates > 1:
        seeds = [replicate_seed(c) for c in configs]
        extra["replicates"] = [{"seed": seed, "metrics": o.metrics} for seed, o in zip(seeds, outcomes)]
        names = [k for k in first.metrics if isinstance(first.metrics[k], float) and k.endswith("_acc") and not k.startswith("test_")]

        def write(folder: Path, inner: Callable[[Path], None] = write) -> None:  # type: ignore[misc]
            inner(folder)
            (folder / "replicates.md").write_text(_replicates_table(seeds, [o.metrics for o in outcomes], names))

    _report(metrics, states, cfg, extra, write,
            _trial_figure(figure, history[: epochs - 1] + [metrics], cfg) if figure else None)


def _trial_figure(figure: tuple[str, str], history: list[dict[str, float]], cfg: Any) -> Callable[[Path], None]:
    """Draws the trial's figure here, in the trial's process, so the driver's
    scheduling loop does not wait on matplotlib."""
    from tuning.experiments import experiment_kind
    from tuning.plots import TRIAL_PLOT, plot_trial

    kind_name, title = figure

    def draw(folder: Path) -> None:
        kind = experiment_kind(kind_name)
        plot_trial(history, kind, title, kind.describe_eval(cfg), folder / TRIAL_PLOT)

    return draw


def replicate_seed(cfg: Any) -> int:
    """The training seed of a (replicate's) config, for its record."""
    return cfg.retrain.seed if isinstance(cfg, FLConfig) else cfg.train.seed


def _write_eval_report(val: EvalReport, test: EvalReport, name: str) -> Callable[[Path], None]:
    """evaluation.md (the accuracies as a table, the integrity checks) and, when
    the config asked for an eps grid, accuracy_vs_eps.png."""

    def write(folder: Path) -> None:
        text = [f"# Robustness evaluation of {name}\n", "## Validation split\n", cnnf_table([(name, [val])]),
                "\n### Integrity checks\n", checks_table(val), "\n## Test split (reporting only)\n",
                cnnf_table([(name, [test])])]
        (folder / "evaluation.md").write_text("\n".join(text) + "\n")
        if val.curves:
            accuracy_vs_eps([(f"{name} val", val), (f"{name} test", test)], folder / "accuracy_vs_eps.png",
                            title=f"{name}: accuracy vs Linf budget")

    return write


def _epoch_metrics(result: EpochResult) -> dict[str, float]:
    # Tune's progress table shows the first few reported metrics: objective first.
    return {"epoch": result.epoch, "val_acc": result.val_acc, "train_loss": result.train_loss, **result.metrics()}


EPOCH_METRICS = EpochResult.metric_names()
# Where a trial's time went (seconds, mean over replicates): training (every
# epoch, resumed ones included), the evaluations, and the whole replicate.
TRIAL_TIMINGS = ("time_train_s", "time_eval_s", "time_trial_s")


def _timings(history: Sequence[EpochResult], reports: dict[str, EvalReport], started: float) -> dict[str, float]:
    """The trial's time metrics: TRIAL_TIMINGS and each report's breakdown as time_<split>_*."""
    out = {"time_train_s": sum(r.seconds for r in history), "time_eval_s": sum(r.seconds for r in reports.values()),
           "time_trial_s": time.perf_counter() - started}
    for split, report in reports.items():
        out.update(report.timings(f"time_{split}_"))
    return out


def _start_trial(cpus: float, n_replicates: int = 1, gpus: float = 0.0) -> list[Optional[TrainState]]:
    """Per-trial process setup; returns each replicate's training state to
    resume from when Tune restarts the trial from its last checkpoint.

    A trial given a GPU sees only that one (Ray sets CUDA_VISIBLE_DEVICES),
    as cuda:0. With a fraction of a GPU (several trials packed on one), the
    trial's PyTorch allocator is capped at that fraction of the GPU's memory,
    so a trial that outgrows its share fails alone with an out-of-memory
    error instead of starving the trials beside it.
    """
    from ray import tune

    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    torch.set_num_threads(max(1, int(cpus)))
    if torch.cuda.is_available():  # the process may be reused from an earlier trial (reuse_actors)
        torch.cuda.empty_cache()
        if gpus > 0:
            torch.cuda.set_device(0)
            if gpus < 1:
                torch.cuda.set_per_process_memory_fraction(gpus, 0)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return [None] * n_replicates
    if checkpoint.filesystem.type_name == "local" and not (Path(checkpoint.path) / _state_file(0)).exists():
        return _successor_states(Path(checkpoint.path), n_replicates)
    with checkpoint.as_directory() as d:
        return _load_states(Path(d), n_replicates)


def _load_states(folder: Path, n_replicates: int) -> list[Optional[TrainState]]:
    return [load_train_state(folder / _state_file(i)) if (folder / _state_file(i)).exists() else None
            for i in range(n_replicates)]


def _successor_states(missing: Path, n_replicates: int) -> list[Optional[TrainState]]:
    """The states of the newest complete checkpoint beside `missing`, the
    checkpoint Tune restored the trial from but which is gone.

    Tune keeps one checkpoint per trial: registering a trial's new checkpoint
    deletes the previous one at once, and the experiment state that names the
    new one is saved later in the same controller step. A driver killed in
    between leaves a state naming the deleted checkpoint. Its successor is
    complete (the trial wrote it before reporting) and its epoch was already
    handed to the callbacks, so the trial goes on from there instead of from
    scratch, and no epoch is trained or logged twice.
    """
    for folder in sorted(missing.parent.glob("checkpoint_*"), reverse=True):
        try:
            states = _load_states(folder, n_replicates)
        except Exception:  # noqa: BLE001 - a checkpoint cut short by the kill: try the one before
            continue
        if states[0] is not None:
            print(f"trial resumes from {folder.name} (epoch {states[0].epoch}): the checkpoint Tune restored, "
                  f"{missing.name}, was deleted before Tune saved its state", file=sys.stderr, flush=True)
            return states
    raise FileNotFoundError(f"{missing}: the checkpoint to resume from is gone and no complete checkpoint is beside it")


def trial_device(requested: str, gpus: float) -> str:
    """The device a trial may use: 'auto' means its GPU only if Ray gave it one.

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so "cuda" is the
    trial's own GPU; a trial that asked for none must not grab a visible one.
    """
    if requested != "auto":
        return requested
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def cnnf_suites(cfg: ExperimentConfig) -> tuple[Suite, Suite]:
    """The suites a CNN-F trial runs on its validation and test splits: the
    same attacks; the integrity checks run once, on the validation split."""
    suite = suite_from_config(cfg.eval, cfg.eval_iterations)
    return suite, replace(suite, checks=False)


def cnnf_final_metrics(cfg: ExperimentConfig, suites: Callable[[ExperimentConfig], tuple[Suite, Suite]] = cnnf_suites) -> tuple[str, ...]:
    """What a CNN-F trial reports at its end, named by the suites it runs."""
    val, test = suites(cfg)
    return (*val.metric_names("val_"), *test.metric_names("test_"), *TRIAL_TIMINGS,
            *val.timing_names("time_val_"), *test.timing_names("time_test_"))


def train_cnnf(config: dict[str, Any], *, base: ExperimentConfig, cpus: float, gpus: float = 0.0,
               stage_dir: Optional[str] = None, replicates: int = 1,
               suites: Callable[[ExperimentConfig], tuple[Suite, Suite]] = cnnf_suites) -> None:
    """One CNN-F trial: train with the sampled knobs, then evaluate.

    Reports each epoch's metrics with a checkpoint; the last report adds the
    clean and PGD accuracies on the validation split (`val_*`, what a sweep
    may optimise) and on the test split (`test_*`, for reporting only).
    With replicates, each seed trains in turn and every metric is their mean.
    suites: config -> the (validation, test) suites the trial runs.
    """
    resume = _start_trial(cpus, replicates, gpus)
    cfg = apply_params(base, config)
    cfg = replace(cfg, train=replace(cfg.train, device=trial_device(cfg.train.device, gpus)))
    splits = load_splits(cfg.data)
    init = _transfer_weights(cfg, splits, Path(stage_dir) if stage_dir else None)

    def run_one(rcfg: ExperimentConfig, state: Optional[TrainState], on_epoch: Callable[[EpochResult, TrainState], None]) -> ReplicateOutcome:
        started = time.perf_counter()
        fitted = fit(rcfg, splits, callback=on_epoch, resume=state, init=init)
        result = fitted.history[-1]  # the history includes the epochs before a resume
        val_suite, test_suite = suites(rcfg)
        val = evaluate(fitted.model, splits.val, val_suite, split="val", kernels=rcfg.train.kernels)
        test = evaluate(fitted.model, splits.test, test_suite, split="test", kernels=rcfg.train.kernels)
        metrics = {**_epoch_metrics(result), **val.metrics("val_"), **test.metrics("test_"),
                   **_timings(fitted.history, {"val": val, "test": test}, started)}
        return ReplicateOutcome(metrics, {"eval": [val.as_dict(), test.as_dict()]},
                                _write_eval_report(val, test, f"{rcfg.model.arch} ind={rcfg.model.ind}"))

    run_replicates(cfg, replicates, _seeded_cnnf, cfg.train.epochs, run_one, resume, ("cnnf", trial_title(config)))


def _seeded_cnnf(cfg: ExperimentConfig, replicate: int) -> ExperimentConfig:
    return cfg if replicate == 0 else replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + replicate))


def _transfer_weights(cfg: ExperimentConfig, splits: Any, stages: Optional[Path]) -> Optional[dict]:
    """train.init_from_cnn: the plain CNN of the same backbone, trained once
    per sweep (a shared stage keyed by its own config) and loaded by every
    trial that asks for the same one."""
    if not cfg.train.init_from_cnn:
        return None
    source = transfer_source(cfg)

    def compute() -> dict:
        return {k: v.detach().cpu() for k, v in fit(source, splits).model.state_dict().items()}

    # The device is left out of the key: a CPU and a GPU trial share one source.
    key = config_key(source.data, source.model, replace(source.train, device="auto"))
    return cached_stage(stages, "transfer-cnn", key, compute,
                        lambda value, path: torch.save(value, path), lambda path: torch.load(path, weights_only=True))


def load_cnnf_model(checkpoint_dir: Path, cfg: ExperimentConfig) -> tuple[torch.nn.Module, Any]:
    """The trained model with its evaluation settings fixed, and an input example."""
    state = load_train_state(Path(checkpoint_dir) / STATE_FILE)
    net = build_model(cfg)
    net.load_state_dict(state.model)
    net.eval()
    example = torch.zeros(1, *dataset_info(cfg.data.dataset).input_shape).numpy()
    return InferenceModel(net, cfg.eval_iterations, cfg.eval.prediction), example


def _cnnf_preflight(cfg: ExperimentConfig) -> None:
    check_available(cfg.data)


def _cnnf_eval_note(cfg: ExperimentConfig) -> str:
    e = cfg.eval
    return (f"PGD-{e.pgd_steps} Linf eps={e.eps_linf:g} ([0, 1] pixel units), {cfg.eval_iterations} feedback "
            f"iterations, prediction '{e.prediction}', first {e.n_examples or 'all'} images per split")


register_experiment(
    ExperimentKind(
        name="cnnf",
        trainable=train_cnnf,
        config_cls=ExperimentConfig,
        epoch_metrics=EPOCH_METRICS,
        final_metrics=cnnf_final_metrics,
        preflight=_cnnf_preflight,
        load_model=load_cnnf_model,
        describe_eval=_cnnf_eval_note,
    )
)


# --- feedback learning ----------------------------------------------------------

def _fl_final_metrics(cfg: FLConfig) -> tuple[str, ...]:
    """What an FL trial reports at its end: the comparison's metrics (named by fl.metrics) and its timings."""
    suites = fl_suites(cfg, FL_SPLITS)
    return (*fl_metric_names(cfg), *TRIAL_TIMINGS, *(n for split, suite in suites.items() for n in suite.timing_names(f"time_{split}_")))


def _pickled_stage(stages: Optional[Path], name: str, key: str, compute: Callable[[], Any]) -> Any:
    """A shared stage holding evaluation reports (pickled: written by this
    stage in this sweep's folder, read back only from there)."""
    return cached_stage(stages, name, key, compute, lambda value, path: path.write_bytes(pickle.dumps(value)),
                        lambda path: pickle.loads(path.read_bytes()))


def _base_reports(cfg: FLConfig, net: torch.nn.Module, splits: Any, stages: Optional[Path]) -> dict[str, EvalReport]:
    """The base model's evaluation, a shared stage: every trial compares against it."""
    key = config_key(cfg.data, cfg.model, cfg.train, cfg.eval)
    return _pickled_stage(stages, "base-eval", key, lambda: evaluate_model(net, splits, cfg))


def _control_reports(cfg: FLConfig, net: torch.nn.Module, splits: Any, stages: Optional[Path]) -> dict[str, EvalReport]:
    """The control, a shared stage: the base model retrained like FL on the
    original images only, so a trial's gain is not the extra epochs'."""
    key = config_key(cfg.data, cfg.model, cfg.train, cfg.retrain, cfg.eval)
    return _pickled_stage(stages, "control-eval", key,
                          lambda: evaluate_model(continue_training(net, splits, cfg).net, splits, cfg))


REDUCED_NAME = "reduced FL, same budget"  # the reduced-FL baseline in a trial's report


def _reduced_baseline(cfg: FLConfig, net: torch.nn.Module, splits: Any, margins: Margins, stats: MarginStats,
                      stages: Optional[Path]) -> ReducedBaseline:
    """Reduced FL at the trial's budget (`fl.config.reduced_at_budget`), a
    shared stage: retrained, evaluated and (eval.margins_after) searched once
    for all trials whose FL chooses as many samples with the same seeds and
    generation settings, whatever their quotas."""
    rcfg = replace(cfg, selection=reduced_at_budget(cfg.selection, splits.n_classes))
    key = config_key(rcfg.data, rcfg.model, rcfg.train, rcfg.search, rcfg.selection, rcfg.retrain, rcfg.eval)

    def compute() -> ReducedBaseline:
        variant = retrain(net, splits, margins, stats, rcfg)
        reports = evaluate_model(variant.net, splits, rcfg, split_names=FL_SPLITS)
        after = None
        if rcfg.eval.margins_after:
            after = margin_stats(search_again(variant.net, splits, margins, rcfg, stage_dir=stages), splits.n_classes)
        return ReducedBaseline(reports, variant.n_generated, after)

    return _pickled_stage(stages, "reduced-eval", key, compute)


def _write_fl_report(cfg: FLConfig, base: dict[str, EvalReport], control: dict[str, EvalReport], trial: dict[str, EvalReport],
                     stats: list[tuple[str, MarginStats]], centre: list[tuple[str, list[float]]],
                     centre_x: torch.Tensor, variant_name: str,
                     reduced: Optional[ReducedBaseline] = None) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        def columns(split: str) -> list[tuple[str, list[EvalReport]]]:
            out = [("original", [base[split]]), ("original + retraining", [control[split]])]
            if reduced is not None:
                out.append((REDUCED_NAME, [reduced.reports[split]]))
            return out + [(variant_name, [trial[split]])]

        models, val_models = columns("test"), columns("val")
        text = [f"# Feedback learning: {variant_name}\n",
                "*original + retraining* is the control: the same retraining on the original images only.\n",
                *([f"*{REDUCED_NAME}* is reduced FL (equal quotas) choosing as many samples as this trial's FL.\n"]
                  if reduced is not None else []),
                "## Accuracy under the FL attack suite, test split (reporting only)\n", fl_table(models),
                "\n## Validation split (what a sweep optimises)\n", fl_table(val_models),
                "\n## Margin statistics\n", robustness_table(stats), "\n### Adjacent-class shares (%)\n",
                adjacent_share_table(stats), "\n### Class-centre images: mean margin\n",
                centre_table([n for n, _ in centre], [m for _, m in centre]),
                "\n## Integrity checks (validation split)\n", checks_table(trial["val"])]
        (folder / "evaluation.md").write_text("\n".join(text) + "\n")
        margin_heatmap(stats, folder / "margin_heatmap.png", title="mean margin (origin x adjacent class)")
        class_robustness(stats, folder / "class_robustness.png", title="class robustness R_i")
        class_centres(centre_x, centre, folder / "class_centres.png")
        for name, labels, title in (("fgsm_curve.png", ("fgsm",), "test accuracy vs FGSM strength"),
                                    ("noise_curve.png", ("uniform_noise", "gaussian_noise"),
                                     "test accuracy vs noise strength (one draw per image)")):
            if any(c.label in labels for c in trial["test"].curves):
                accuracy_vs_eps([("original", base["test"]), (variant_name, trial["test"])], folder / name,
                                labels=labels, title=title)

    return write


def train_fl(config: dict[str, Any], *, base: FLConfig, cpus: float, gpus: float = 0.0,
             stage_dir: Optional[str] = None, replicates: int = 1) -> None:
    """One feedback-learning trial: the trained base model and its margins come
    from the sweep's shared stages (computed by the first trial that needs
    them); the trial selects with its quotas, generates, retrains (reporting
    each epoch with a checkpoint), then evaluates and searches the retrained
    model's margins, and reports beside it reduced FL at the same budget (a
    shared stage too). Replicates vary the selection and retraining seeds."""
    resume = _start_trial(cpus, replicates, gpus)
    cfg = apply_params(base, config)
    device = trial_device(cfg.train.device, gpus)
    cfg = replace(cfg, train=replace(cfg.train, device=device),
                  search=replace(cfg.search, device=trial_device(cfg.search.device, gpus)))
    stages = Path(stage_dir) if stage_dir else None
    splits = load_splits(cfg.data)
    net, _ = train_base(cfg, splits, stage_dir=stages)
    margins = search_margins(net, splits, cfg, stage_dir=stages)
    stats = margin_stats(margins, splits.n_classes)
    base_reports = _base_reports(cfg, net, splits, stages)
    control_reports = _control_reports(cfg, net, splits, stages)

    def run_one(rcfg: FLConfig, state: Optional[TrainState], on_epoch: Callable[[EpochResult, TrainState], None]) -> ReplicateOutcome:
        started = time.perf_counter()
        variant = retrain(net, splits, margins, stats, rcfg, callback=on_epoch, resume=state)
        result = variant.history[-1]  # the history includes the epochs before a resume
        reports = evaluate_model(variant.net, splits, rcfg, split_names=FL_SPLITS)
        all_stats = [("original", stats)]
        after = heldout = base_heldout = None
        centre_margin = None
        if rcfg.eval.margins_after:
            # The original's samples, along its directions (those the examples were made from) and held-out ones.
            again = search_again(variant.net, splits, margins, rcfg, stage_dir=stages)
            after, centre_margin = margin_stats(again, splits.n_classes), centre_of(again, stats)
            all_stats.append((variant.name, after))
            heldout = margin_stats(search_again(variant.net, splits, margins, rcfg, heldout=True, stage_dir=stages),
                                   splits.n_classes)
            base_heldout = margin_stats(search_again(net, splits, margins, rcfg, heldout=True, stage_dir=stages),
                                        splits.n_classes)
        reduced = _reduced_baseline(rcfg, net, splits, margins, stats, stages)
        if reduced.after is not None:
            all_stats.append((REDUCED_NAME, reduced.after))
        metrics: dict[str, Any] = {**_epoch_metrics(result),
                                   **comparison_metrics(reports, base_reports, control_reports, stats, variant.n_generated, after,
                                                        reduced, heldout, base_heldout),
                                   **_timings(variant.history, reports, started)}
        if centre_margin is None:
            centre_margin = centre_margins(variant.net, splits, margins, stats, rcfg)
        centre = [("original", stats.centre_margin.tolist()), (variant.name, centre_margin.tolist())]
        extra = {"eval": [reports["val"].as_dict(), reports["test"].as_dict()], "plan": variant.plan.as_dict() if variant.plan else None,
                 "margins": {name: s.as_dict() for name, s in all_stats},
                 "margins_heldout": {name: s.as_dict() for name, s in (("original", base_heldout), (variant.name, heldout))
                                     if s is not None},
                 "reduced_baseline": {"selection": asdict(reduced_at_budget(rcfg.selection, splits.n_classes)),
                                      "eval": [reduced.reports["val"].as_dict(), reduced.reports["test"].as_dict()]}}
        return ReplicateOutcome(metrics, extra,
                                _write_fl_report(rcfg, base_reports, control_reports, reports, all_stats, centre,
                                                 centre_images(splits, margins, stats), variant.name, reduced))

    run_replicates(cfg, replicates, _seeded_fl, cfg.retrain.epochs, run_one, resume, ("fl", trial_title(config)))


def _seeded_fl(cfg: FLConfig, replicate: int) -> FLConfig:
    if replicate == 0:
        return cfg
    return replace(cfg, selection=replace(cfg.selection, seed=cfg.selection.seed + replicate),
                   retrain=replace(cfg.retrain, seed=cfg.retrain.seed + replicate))


def load_fl_model(checkpoint_dir: Path, cfg: FLConfig) -> tuple[torch.nn.Module, Any]:
    state = load_train_state(Path(checkpoint_dir) / STATE_FILE)
    net = build_model(cfg.retrain_experiment())
    net.load_state_dict(state.model)
    example = torch.zeros(1, *dataset_info(cfg.data.dataset).input_shape).numpy()
    return scored_model(net, cfg), example


def _fl_eval_note(cfg: FLConfig) -> str:
    e = cfg.eval
    return (f"FL suite: Linf eps={e.eps_linf:g}, L2 {e.l2_eps}, noise {e.noise_eps:g}/{e.noise_sigma:g} ([0, 1] pixel units); "
            f"first {e.n_examples or 'all'} images per split; margins of {cfg.search.n_samples} samples x {cfg.n_directions} directions")


register_experiment(
    ExperimentKind(
        name="fl",
        trainable=train_fl,
        config_cls=FLConfig,
        epoch_metrics=EPOCH_METRICS,
        final_metrics=_fl_final_metrics,
        preflight=lambda cfg: check_available(cfg.data),
        load_model=load_fl_model,
        describe_eval=_fl_eval_note,
        epochs_path="retrain.epochs",
    )
)
