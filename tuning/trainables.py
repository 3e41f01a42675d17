"""Trainables: rebuild the typed config from the sampled values, call the
library, report. Ray is imported inside the functions so that registering
the kinds (and `sweep validate`) stays free of Ray.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from cnnf.config import ExperimentConfig
from cnnf.data import check_available, dataset_info, load_splits
from cnnf.evaluate import evaluate, suite_from_config
from cnnf.models import InferenceModel
from cnnf.plots import accuracy_vs_eps
from cnnf.report import EvalReport
from cnnf.tables import checks_table, cnnf_table
from cnnf.train import EpochResult, TrainState, build_model, fit, load_train_state, save_train_state

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


def trial_device(requested: str, gpus: float) -> str:
    """The device a trial may use: 'auto' means its GPU only if Ray gave it one.

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so "cuda" is the
    trial's own GPU; a trial that asked for none must not grab a visible one.
    """
    if requested != "auto":
        return requested
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def train_cnnf(config: dict[str, Any], *, base: ExperimentConfig, cpus: float, gpus: float = 0.0) -> None:
    """One CNN-F trial: train with the sampled knobs, then evaluate.

    Reports each epoch's metrics with a checkpoint; the last report adds the
    clean and PGD accuracies on the validation split (`val_*`, what a sweep
    may optimise) and on the test split (`test_*`, for reporting only).
    """
    from ray import tune

    for name in ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    torch.set_num_threads(max(1, int(cpus)))
    cfg = apply_params(base, config)
    cfg = replace(cfg, train=replace(cfg.train, device=trial_device(cfg.train.device, gpus)))
    splits = load_splits(cfg.data)
    checkpoint = tune.get_checkpoint()
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_train_state(Path(d) / STATE_FILE)

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
        epoch_metrics=("train_loss", "train_ce", "train_recon", "train_acc", "val_acc", "seconds", "images_per_s"),
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
