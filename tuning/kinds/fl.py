"""The feedback-learning experiment kind: the FL pipeline (`fl.pipeline`) on
the sweep's shared base model and margins, one selection/retraining per
trial, compared with the control and reduced FL at the same budget.

The library (and torch) is imported inside the functions, and Ray only by the
trial machinery (`tuning.replicates`), so that registering the kind imports
neither.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tuning.kinds.registry import ExperimentKind, check_data, register_lazy_experiment

if TYPE_CHECKING:
    import torch

    from cnnf.report import EvalReport
    from cnnf.train import EpochResult, TrainState
    from fl.config import FLConfig
    from fl.metrics import ReducedBaseline
    from fl.search import Margins
    from fl.stats import MarginStats
    from tuning.replicates import ReplicateOutcome


def _fl_final_metrics(cfg: FLConfig) -> tuple[str, ...]:
    """What an FL trial reports at its end: the comparison's metrics (named by fl.metrics) and its timings."""
    from fl.metrics import SPLITS, metric_names
    from fl.pipeline import fl_suites
    from tuning.replicates import TRIAL_METRICS

    suites = fl_suites(cfg, SPLITS)
    return (*metric_names(cfg), *TRIAL_METRICS, *(n for split, suite in suites.items() for n in suite.timing_names(f"time_{split}_")))


def _pickled_stage(stages: Optional[Path], name: str, key: str, compute: Callable[[], Any]) -> Any:
    """A shared stage holding evaluation reports (pickled: written by this
    stage in this sweep's folder, read back only from there)."""
    import pickle

    from cnnf.stages import cached_stage

    return cached_stage(stages, name, key, compute, lambda value, path: path.write_bytes(pickle.dumps(value)),
                        lambda path: pickle.loads(path.read_bytes()))


def _base_reports(cfg: FLConfig, net: torch.nn.Module, splits: Any, stages: Optional[Path]) -> dict[str, EvalReport]:
    """The base model's evaluation, a shared stage: every trial compares against it."""
    from cnnf.stages import config_key
    from fl.pipeline import evaluate_model

    key = config_key(cfg.data, cfg.model, cfg.train, cfg.eval)
    return _pickled_stage(stages, "base-eval", key, lambda: evaluate_model(net, splits, cfg))


def _control_reports(cfg: FLConfig, net: torch.nn.Module, splits: Any, stages: Optional[Path]) -> dict[str, EvalReport]:
    """The control, a shared stage: the base model retrained like FL on the
    original images only, so a trial's gain is not the extra epochs'."""
    from cnnf.stages import config_key
    from fl.pipeline import continue_training, evaluate_model

    key = config_key(cfg.data, cfg.model, cfg.train, cfg.retrain, cfg.eval)
    return _pickled_stage(stages, "control-eval", key,
                          lambda: evaluate_model(continue_training(net, splits, cfg).net, splits, cfg))


def _reduced_baseline(cfg: FLConfig, net: torch.nn.Module, splits: Any, margins: Margins, stats: MarginStats,
                      stages: Optional[Path]) -> ReducedBaseline:
    """Reduced FL at the trial's budget (`fl.config.reduced_at_budget`), a
    shared stage: retrained, evaluated and (eval.margins_after) searched once
    for all trials whose FL chooses as many samples with the same seeds and
    generation settings, whatever their quotas."""
    from cnnf.stages import config_key
    from fl.config import reduced_at_budget
    from fl.metrics import SPLITS, ReducedBaseline
    from fl.pipeline import evaluate_model, retrain, search_again
    from fl.stats import margin_stats

    rcfg = replace(cfg, selection=reduced_at_budget(cfg.selection, splits.n_classes))
    key = config_key(rcfg.data, rcfg.model, rcfg.train, rcfg.search, rcfg.selection, rcfg.retrain, rcfg.eval)

    def compute() -> ReducedBaseline:
        variant = retrain(net, splits, margins, stats, rcfg)
        reports = evaluate_model(variant.net, splits, rcfg, split_names=SPLITS)
        after = None
        if rcfg.eval.margins_after:
            after = margin_stats(search_again(variant.net, splits, margins, rcfg, stage_dir=stages), splits.n_classes)
        return ReducedBaseline(reports, variant.n_generated, after)

    return _pickled_stage(stages, "reduced-eval", key, compute)


def train_fl(config: dict[str, Any], *, base: FLConfig, cpus: float, gpus: float = 0.0,
             stage_dir: Optional[str] = None, replicates: int = 1) -> None:
    """One feedback-learning trial: the trained base model and its margins come
    from the sweep's shared stages (computed by the first trial that needs
    them); the trial selects with its quotas, generates, retrains (reporting
    each epoch with a checkpoint), then evaluates and searches the retrained
    model's margins, and reports beside it reduced FL at the same budget (a
    shared stage too). Replicates vary the selection and retraining seeds."""
    import time
    from functools import partial

    from cnnf.data import load_splits
    from fl.config import reduced_at_budget
    from fl.metrics import SPLITS, comparison_metrics
    from fl.pipeline import (centre_images, centre_margins, centre_of, evaluate_model, retrain, search_again, search_margins,
                             train_base)
    from fl.report_files import REDUCED_NAME, write_fl_report
    from fl.stats import margin_stats
    from tuning.plots import trial_title
    from tuning.replicates import ReplicateOutcome, epoch_metrics, run_replicates, start_trial, trial_device, trial_timings
    from tuning.space import apply_params

    resume = start_trial(cpus, replicates, gpus)
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
        reports = evaluate_model(variant.net, splits, rcfg, split_names=SPLITS)
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
        metrics: dict[str, Any] = {**epoch_metrics(result),
                                   **comparison_metrics(reports, base_reports, control_reports, stats, variant.n_generated, after,
                                                        reduced, heldout, base_heldout),
                                   **trial_timings(variant.history, reports, started)}
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
                                partial(write_fl_report, base=base_reports, control=control_reports, trial=reports,
                                        stats=all_stats, centre=centre, centre_x=centre_images(splits, margins, stats),
                                        variant_name=variant.name, reduced=reduced))

    run_replicates(cfg, replicates, _seeded_fl, cfg.retrain.epochs, run_one, resume, ("fl", trial_title(config)))


def _seeded_fl(cfg: FLConfig, replicate: int) -> FLConfig:
    if replicate == 0:
        return cfg
    return replace(cfg, selection=replace(cfg.selection, seed=cfg.selection.seed + replicate),
                   retrain=replace(cfg.retrain, seed=cfg.retrain.seed + replicate))


def load_fl_model(checkpoint_dir: Path, cfg: FLConfig) -> tuple[torch.nn.Module, Any]:
    import torch

    from cnnf.catalog import dataset_info
    from cnnf.train import build_model, load_train_state
    from fl.pipeline import scored_model
    from tuning.replicates import STATE_FILE

    state = load_train_state(Path(checkpoint_dir) / STATE_FILE)
    net = build_model(cfg.retrain_experiment())
    net.load_state_dict(state.model)
    example = torch.zeros(1, *dataset_info(cfg.data.dataset).input_shape).numpy()
    return scored_model(net, cfg), example


def _fl_eval_note(cfg: FLConfig) -> str:
    e = cfg.eval
    return (f"FL suite: Linf eps={e.eps_linf:g}, L2 {e.l2_eps}, noise {e.noise_eps:g}/{e.noise_sigma:g} ([0, 1] pixel units); "
            f"first {e.n_examples or 'all'} images per split; margins of {cfg.search.n_samples} samples x {cfg.n_directions} directions")


def _kind() -> ExperimentKind:
    from fl.config import FLConfig
    from tuning.replicates import EPOCH_METRICS

    return ExperimentKind(
        name="fl",
        trainable=train_fl,
        config_cls=FLConfig,
        epoch_metrics=EPOCH_METRICS,
        final_metrics=_fl_final_metrics,
        preflight=check_data,
        load_model=load_fl_model,
        describe_eval=_fl_eval_note,
        epochs_path="retrain.epochs",
        seed_path="retrain.seed",
    )


register_lazy_experiment("fl", _kind)
