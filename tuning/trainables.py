"""Trainables: rebuild the typed config from the sampled values, call the
library, report. Ray is imported inside the functions so that registering
the kinds (and `sweep validate`) stays free of Ray.
"""

from __future__ import annotations

import json
import logging
import pickle
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from cnnf.config import ExperimentConfig
from cnnf.data import check_available, dataset_info, load_splits
from cnnf.evaluate import evaluate, suite_from_config
from cnnf.models import InferenceModel
from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport
from cnnf.tables import checks_table, cnnf_table
from cnnf.train import EpochResult, TrainState, build_model, fit, load_train_state, save_train_state

from fl.config import FLConfig
from fl.pipeline import centre_images, centre_margins, continue_training, evaluate_model, retrain, scored_model, search_margins, train_base
from fl.plots import class_centres, class_robustness, margin_heatmap
from fl.stages import cached_stage, config_key
from fl.stats import MarginStats, margin_stats, r_spread
from fl.tables import adjacent_share_table, centre_table, fl_table, robustness_table
from tuning.experiments import REPORT_DIR, ExperimentKind, register_experiment
from tuning.space import apply_params

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"


def _report(metrics: dict[str, float], state: TrainState, config: ExperimentConfig, extra: dict[str, Any] | None = None,
            write_report: Callable[[Path], None] | None = None) -> None:
    """Report metrics with a checkpoint; `write_report` may add files under the
    checkpoint's REPORT_DIR, which the tracker logs as run artifacts."""
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        save_train_state(state, Path(tmp) / STATE_FILE)
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps({"config": asdict(config), **(extra or {})}, indent=2))
        if write_report is not None:
            (Path(tmp) / REPORT_DIR).mkdir()
            write_report(Path(tmp) / REPORT_DIR)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


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


EPOCH_METRICS = ("train_loss", "train_ce", "train_recon", "train_acc", "val_acc", "seconds", "images_per_s")


def _start_trial(cpus: float) -> Optional[TrainState]:
    """Per-trial process setup; returns the training state to resume from
    when Tune restarts the trial from its last checkpoint."""
    from ray import tune

    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    torch.set_num_threads(max(1, int(cpus)))
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_train_state(Path(d) / STATE_FILE)


def trial_device(requested: str, gpus: float) -> str:
    """The device a trial may use: 'auto' means its GPU only if Ray gave it one.

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so "cuda" is the
    trial's own GPU; a trial that asked for none must not grab a visible one.
    """
    if requested != "auto":
        return requested
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def train_cnnf(config: dict[str, Any], *, base: ExperimentConfig, cpus: float, gpus: float = 0.0,
               stage_dir: Optional[str] = None) -> None:
    """One CNN-F trial: train with the sampled knobs, then evaluate.

    Reports each epoch's metrics with a checkpoint; the last report adds the
    clean and PGD accuracies on the validation split (`val_*`, what a sweep
    may optimise) and on the test split (`test_*`, for reporting only).
    """
    resume = _start_trial(cpus)
    cfg = apply_params(base, config)
    cfg = replace(cfg, train=replace(cfg.train, device=trial_device(cfg.train.device, gpus)))
    splits = load_splits(cfg.data)

    last: dict[str, Any] = {}

    def on_epoch(result: EpochResult, state: TrainState) -> None:
        if result.epoch < cfg.train.epochs:
            _report(_epoch_metrics(result), state, cfg)
        last["result"], last["state"] = result, state

    fitted = fit(cfg, splits, callback=on_epoch, resume=resume)
    result, state = last.get("result", fitted.history[-1]), last.get("state", resume)
    suite = suite_from_config(cfg.eval, cfg.eval_iterations)
    val = evaluate(fitted.model, splits.val, suite, split="val")
    # The integrity checks run once, on the validation split.
    test = evaluate(fitted.model, splits.test, replace(suite, checks=False), split="test")
    metrics = {**_epoch_metrics(result), **val.metrics("val_"), **test.metrics("test_")}
    _report(metrics, state, cfg, {"eval": [val.as_dict(), test.as_dict()]},
            _write_eval_report(val, test, f"{cfg.model.arch} ind={cfg.model.ind}"))


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
        final_metrics=(
            "val_clean_acc", "val_pgd_first_acc", "val_pgd_e2e_acc", "val_fgsm_acc", "val_min_acc", "val_checks_flagged",
            *(f"val_check_{i}_ok" for i in range(1, 9)),
            "test_clean_acc", "test_pgd_first_acc", "test_pgd_e2e_acc", "test_fgsm_acc", "test_min_acc",
        ),
        preflight=_cnnf_preflight,
        load_model=load_cnnf_model,
        describe_eval=_cnnf_eval_note,
    )
)


# --- feedback learning ----------------------------------------------------------

FL_ATTACKS = ("fgsm", "cw_l2", "pgd_linf", "bim", "mim", "deepfool", "uniform_noise", "gaussian_noise")
FL_MARGIN_METRICS = ("R", "R_spread", "base_R", "base_R_spread", "n_generated")


def _fl_split_metrics(prefix: str, checks: bool) -> tuple[str, ...]:
    names = [f"{prefix}clean_acc", f"{prefix}min_acc", *(f"{prefix}{a}_acc" for a in FL_ATTACKS)]
    if checks:
        names += [f"{prefix}checks_flagged", *(f"{prefix}check_{i}_ok" for i in range(1, 9))]
    return tuple(names)


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


def _write_fl_report(cfg: FLConfig, base: dict[str, EvalReport], control: dict[str, EvalReport], trial: dict[str, EvalReport],
                     stats: list[tuple[str, MarginStats]], centre: list[tuple[str, list[float]]],
                     centre_x: torch.Tensor, variant_name: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        def columns(split: str) -> list[tuple[str, list[EvalReport]]]:
            return [("original", [base[split]]), ("original + retraining", [control[split]]), (variant_name, [trial[split]])]

        models, val_models = columns("test"), columns("val")
        text = [f"# Feedback learning: {variant_name}\n",
                "*original + retraining* is the control: the same retraining on the original images only.\n",
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
        if trial["test"].curves:
            accuracy_vs_eps([("original", base["test"]), (variant_name, trial["test"])], folder / "fgsm_curve.png",
                            title="test accuracy vs FGSM strength")

    return write


def train_fl(config: dict[str, Any], *, base: FLConfig, cpus: float, gpus: float = 0.0,
             stage_dir: Optional[str] = None) -> None:
    """One feedback-learning trial: the trained base model and its margins come
    from the sweep's shared stages (computed by the first trial that needs
    them); the trial selects with its quotas, generates, retrains (reporting
    each epoch with a checkpoint), then evaluates and searches the retrained
    model's margins."""
    resume = _start_trial(cpus)
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

    last: dict[str, Any] = {}

    def on_epoch(result: EpochResult, state: TrainState) -> None:
        if result.epoch < cfg.retrain.epochs:
            _report(_epoch_metrics(result), state, cfg)
        last["result"], last["state"] = result, state

    variant = retrain(net, splits, margins, stats, cfg, callback=on_epoch, resume=resume)
    result, state = last.get("result", variant.history[-1]), last.get("state", resume)
    reports = evaluate_model(variant.net, splits, cfg)
    all_stats = [("original", stats)]
    metrics: dict[str, Any] = {**_epoch_metrics(result), **reports["val"].metrics("val_"), **reports["test"].metrics("test_"),
                               "base_R": stats.robustness, "base_R_spread": r_spread(stats.class_robustness),
                               "n_generated": variant.n_generated,
                               **{f"base_{k}": v for k, v in base_reports["val"].metrics("val_").items() if k.endswith("_acc")},
                               **{f"control_{k}": v for k, v in control_reports["val"].metrics("val_").items() if k.endswith("_acc")}}
    if cfg.eval.margins_after:
        after = margin_stats(search_margins(variant.net, splits, cfg, stage_dir=stages), splits.n_classes)
        all_stats.append((variant.name, after))
        metrics.update({"R": after.robustness, "R_spread": r_spread(after.class_robustness)})
    centre = [("original", stats.centre_margin.tolist()),
              (variant.name, centre_margins(variant.net, splits, margins, stats, cfg).tolist())]
    extra = {"eval": [reports["val"].as_dict(), reports["test"].as_dict()], "plan": variant.plan.as_dict() if variant.plan else None,
             "margins": {name: s.as_dict() for name, s in all_stats}}
    _report(metrics, state, cfg, extra, _write_fl_report(cfg, base_reports, control_reports, reports, all_stats, centre,
                                                        centre_images(splits, margins, stats), variant.name))


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
        final_metrics=(*_fl_split_metrics("val_", True), *_fl_split_metrics("test_", False), *FL_MARGIN_METRICS,
                       *(f"base_{m}" for m in _fl_split_metrics("val_", False)),
                       *(f"control_{m}" for m in _fl_split_metrics("val_", False))),
        preflight=lambda cfg: check_available(cfg.data),
        load_model=load_fl_model,
        describe_eval=_fl_eval_note,
    )
)
