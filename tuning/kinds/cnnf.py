"""The CNN-F experiment kind: train a CNN-F with the sampled knobs, evaluate it
on the validation and test splits (`cnnf.evaluate`), report.

The library (and torch) is imported inside the functions, and Ray only by the
trial machinery (`tuning.replicates`), so that registering the kind imports
neither.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tuning.kinds.registry import ExperimentKind, check_data, register_lazy_experiment

if TYPE_CHECKING:
    import torch

    from cnnf.config import ExperimentConfig
    from cnnf.suite import Suite
    from cnnf.train import EpochResult, TrainState
    from tuning.replicates import ReplicateOutcome


def cnnf_suites(cfg: ExperimentConfig) -> tuple[Suite, Suite]:
    """The suites a CNN-F trial runs on its validation and test splits: the
    same attacks; the integrity checks run once, on the validation split."""
    from cnnf.suite import suite_from_config

    suite = suite_from_config(cfg.eval, cfg.eval_iterations)
    return suite, replace(suite, checks=False)


def cnnf_final_metrics(cfg: ExperimentConfig, suites: Callable[[ExperimentConfig], tuple[Suite, Suite]] = cnnf_suites) -> tuple[str, ...]:
    """What a CNN-F trial reports at its end, named by the suites it runs."""
    from tuning.replicates import TRIAL_METRICS

    val, test = suites(cfg)
    return (*val.metric_names("val_"), *test.metric_names("test_"), *TRIAL_METRICS,
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
    import time
    from functools import partial

    from cnnf.data import load_splits
    from cnnf.evaluate import evaluate
    from cnnf.report_files import write_eval_report
    from cnnf.train import fit
    from tuning.plots import trial_title
    from tuning.replicates import ReplicateOutcome, epoch_metrics, run_replicates, start_trial, trial_device, trial_timings
    from tuning.space import apply_params

    resume = start_trial(cpus, replicates, gpus)
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
        metrics = {**epoch_metrics(result), **val.metrics("val_"), **test.metrics("test_"),
                   **trial_timings(fitted.history, {"val": val, "test": test}, started)}
        return ReplicateOutcome(metrics, {"eval": [val.as_dict(), test.as_dict()]},
                                partial(write_eval_report, val=val, test=test, name=f"{rcfg.model.arch} ind={rcfg.model.ind}"))

    run_replicates(cfg, replicates, _seeded_cnnf, cfg.train.epochs, run_one, resume, ("cnnf", trial_title(config)))


def _seeded_cnnf(cfg: ExperimentConfig, replicate: int) -> ExperimentConfig:
    return cfg if replicate == 0 else replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + replicate))


def _transfer_weights(cfg: ExperimentConfig, splits: Any, stages: Optional[Path]) -> Optional[dict]:
    """train.init_from_cnn: the plain CNN of the same backbone, trained once
    per sweep (a shared stage keyed by its own config) and loaded by every
    trial that asks for the same one."""
    if not cfg.train.init_from_cnn:
        return None
    import torch

    from cnnf.stages import cached_stage, config_key
    from cnnf.train import fit, transfer_source

    source = transfer_source(cfg)

    def compute() -> dict:
        return {k: v.detach().cpu() for k, v in fit(source, splits).model.state_dict().items()}

    # The device is left out of the key: a CPU and a GPU trial share one source.
    key = config_key(source.data, source.model, replace(source.train, device="auto"))
    return cached_stage(stages, "transfer-cnn", key, compute,
                        lambda value, path: torch.save(value, path), lambda path: torch.load(path, weights_only=True))


def load_cnnf_model(checkpoint_dir: Path, cfg: ExperimentConfig) -> tuple[torch.nn.Module, Any]:
    """The trained model with its evaluation settings fixed, and an input example."""
    import torch

    from cnnf.catalog import dataset_info
    from cnnf.models import InferenceModel
    from cnnf.train import build_model, load_train_state
    from tuning.replicates import STATE_FILE

    state = load_train_state(Path(checkpoint_dir) / STATE_FILE)
    net = build_model(cfg)
    net.load_state_dict(state.model)
    net.eval()
    example = torch.zeros(1, *dataset_info(cfg.data.dataset).input_shape).numpy()
    return InferenceModel(net, cfg.eval_iterations, cfg.eval.prediction), example


def _cnnf_eval_note(cfg: ExperimentConfig) -> str:
    e = cfg.eval
    return (f"PGD-{e.pgd_steps} Linf eps={e.eps_linf:g} ([0, 1] pixel units), {cfg.eval_iterations} feedback "
            f"iterations, prediction '{e.prediction}', first {e.n_examples or 'all'} images per split")


def _kind() -> ExperimentKind:
    from cnnf.config import ExperimentConfig
    from tuning.replicates import EPOCH_METRICS

    return ExperimentKind(
        name="cnnf",
        trainable=train_cnnf,
        config_cls=ExperimentConfig,
        epoch_metrics=EPOCH_METRICS,
        final_metrics=cnnf_final_metrics,
        preflight=check_data,
        load_model=load_cnnf_model,
        describe_eval=_cnnf_eval_note,
    )


register_lazy_experiment("cnnf", _kind)
