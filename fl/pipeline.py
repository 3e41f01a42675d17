"""The five steps of feedback learning as stages (fl-spec "The five steps").

    net, _ = train_base(cfg, splits)                      # 1. train
    margins = search_margins(net, splits, cfg)             # 2-3. select samples, boundary search
    stats = margin_stats(margins, splits.n_classes)        #      M, N, R, R_i
    variant = retrain(net, splits, margins, stats, cfg)   # 4-5. tiers, quotas, generation, retraining
    reports = evaluate_model(variant.net, splits, cfg)    #      Table III attacks

`run_feedback_learning` chains them for the original model, FL and reduced
FL. Each step takes the typed config and returns values; with a
`stage_dir`, the base model and the margins are computed once and reused
by every later call with the same settings (a quota sweep trains and
searches once). Progress and messages leave through callbacks; nothing here
prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from cnnf.data import ArrayDataset, DataSplits
from cnnf.evaluate import EvalProgress, evaluate
from cnnf.suite import Suite, fl_paper_suite
from cnnf.models import FeedbackNet, InferenceModel
from cnnf.report import EvalReport
from cnnf.train import EpochCallback, EpochResult, FitResult, TrainState, build_model, fit, resolve_device
from fl.config import FLConfig
from fl.directions import orthogonal_directions
from fl.search import Margins, Progress, boundary_search, scan
from fl.select import SelectionPlan, generate, plan_selection
from cnnf.stages import cached_stage, config_key
from fl.stats import MarginStats, margin_stats

Log = Callable[[str], None]
# "continued": the control, retrained exactly like FL but on the original images
# only, so gains from the extra epochs are not credited to the generated examples.
VARIANTS = ("original", "continued", "fl", "reduced_fl")


def scoring(cfg: FLConfig) -> tuple[int, str]:
    """(feedback iterations, prediction) of the scored classifier: the base
    experiment's evaluation settings; a plain CNN scores its single pass."""
    exp = cfg.base_experiment()
    iterations = exp.eval_iterations
    return iterations, exp.eval.prediction if iterations > 0 else "first"


def scored_model(net: FeedbackNet, cfg: FLConfig) -> nn.Module:
    """The classifier the search and generation see (`scoring`)."""
    return InferenceModel(net, *scoring(cfg)).eval()


def train_base(cfg: FLConfig, splits: DataSplits, *, stage_dir: Optional[Path] = None,
               callback: Optional[EpochCallback] = None, log: Optional[Log] = None) -> tuple[FeedbackNet, tuple[EpochResult, ...]]:
    """Step 1: train the model normally. Stored in stage_dir under the key of
    (data, model, train), so every trial of a sweep that shares them reuses it."""
    exp = cfg.base_experiment()

    def compute() -> tuple[FeedbackNet, tuple[EpochResult, ...]]:
        result = fit(exp, splits, callback=callback)
        return result.model, result.history

    def save(value: tuple[FeedbackNet, tuple[EpochResult, ...]], path: Path) -> None:
        torch.save({"model": {k: v.cpu() for k, v in value[0].state_dict().items()},
                    "history": [r.__dict__ for r in value[1]]}, path)

    def load(path: Path) -> tuple[FeedbackNet, tuple[EpochResult, ...]]:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        net = build_model(exp)
        net.load_state_dict(raw["model"])
        return net.to(resolve_device(exp.train.device)).eval(), tuple(EpochResult(**r) for r in raw["history"])

    return cached_stage(stage_dir, "base", config_key(cfg.data, cfg.model, cfg.train), compute, save, load, log)


def search_margins(net: FeedbackNet, splits: DataSplits, cfg: FLConfig, *, rows: Optional[Tensor] = None,
                   directions_seed: Optional[int] = None, stage_dir: Optional[Path] = None,
                   progress: Optional[Progress] = None, log: Optional[Log] = None) -> Margins:
    """Steps 2-3: search the margins of training samples (cached in stage_dir
    by the model's and the search's fingerprint). rows None: draw the samples
    from the model's correctly classified images (the original model);
    rows given (another search's `Margins.indices`): search those, so every
    model of a comparison is measured on one sample set. directions_seed: see
    `fl.search.boundary_search` (None: cfg.search.seed)."""
    device = resolve_device(cfg.search.device)
    model = scored_model(net, cfg).to(device)
    return boundary_search(model, splits.train, cfg.search, splits.n_classes, rows=rows, directions_seed=directions_seed,
                           cache_dir=stage_dir, progress=progress, log=log)


def search_again(net: FeedbackNet, splits: DataSplits, margins: Margins, cfg: FLConfig, *, heldout: bool = False,
                 stage_dir: Optional[Path] = None, progress: Optional[Progress] = None, log: Optional[Log] = None) -> Margins:
    """Another model's margins on the samples of `margins` (the original
    model's search): along the same directions, or (heldout) along the
    held-out directions (`search.heldout_seed`), which no generated example was made from."""
    seed = cfg.search.heldout_directions_seed if heldout else margins.directions_seed
    return search_margins(net, splits, cfg, rows=margins.indices, directions_seed=seed, stage_dir=stage_dir,
                          progress=progress, log=log)


def directions_of(margins: Margins, cfg: FLConfig, input_shape: Sequence[int]) -> Tensor:
    """The directions a search used, recomputed from its seed."""
    dim = int(torch.tensor(input_shape).prod())
    seed = margins.directions_seed if margins.directions_seed is not None else cfg.search.seed
    return orthogonal_directions(margins.n_directions, dim, seed)


@dataclass(frozen=True)
class Variant:
    """A model of the comparison: the original, FL or reduced FL."""

    name: str
    net: FeedbackNet
    history: tuple[EpochResult, ...]
    plan: Optional[SelectionPlan] = None
    n_generated: int = 0
    generated_per_class: tuple[int, ...] = ()


def retrain(net: FeedbackNet, splits: DataSplits, margins: Margins, stats: MarginStats, cfg: FLConfig, *,
            equal_quotas: Optional[bool] = None, callback: Optional[EpochCallback] = None,
            resume: Optional[TrainState] = None) -> Variant:
    """Steps 4-5: tiers and quotas from R_i, boundary-crossing examples along
    each chosen sample's smallest-margin directions, then retraining from the
    trained weights on the original training images shuffled with them.
    equal_quotas overrides cfg.selection.equal_quotas (True: reduced FL).
    The generation is seeded, so a retraining resumed from `resume` (a
    TrainState of this retraining) sees the same data."""
    sel = cfg.selection if equal_quotas is None else replace(cfg.selection, equal_quotas=equal_quotas)
    plan = plan_selection(margins, stats.class_robustness, sel)
    x = splits.train.x[margins.indices]
    generated = generate(x, margins, directions_of(margins, cfg, splits.input_shape), plan, sel, clip=cfg.search.clip)
    train = ArrayDataset(torch.cat([splits.train.x, generated.x]), torch.cat([splits.train.y, generated.y]))
    result = _retrain_from(net, replace(splits, train=train), cfg, callback, resume)
    per_class = tuple(torch.bincount(generated.y, minlength=splits.n_classes).tolist())
    return Variant("reduced_fl" if sel.equal_quotas else "fl", result.model, result.history, plan, len(generated), per_class)


def continue_training(net: FeedbackNet, splits: DataSplits, cfg: FLConfig, *,
                      callback: Optional[EpochCallback] = None) -> Variant:
    """The control of FL: the retraining schedule on the original images alone."""
    result = _retrain_from(net, splits, cfg, callback, None)
    return Variant("continued", result.model, result.history)


def _retrain_from(net: FeedbackNet, splits: DataSplits, cfg: FLConfig, callback: Optional[EpochCallback],
                  resume: Optional[TrainState]) -> FitResult:
    """cfg.retrain's schedule on splits.train, starting from net's weights."""
    init = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return fit(cfg.retrain_experiment(), splits, callback=callback, init=init, resume=resume)


def centre_margins(net: FeedbackNet, splits: DataSplits, margins: Margins, stats: MarginStats, cfg: FLConfig) -> Tensor:
    """Mean margin of each class-centre sample (chosen on the original model)
    under `net`, along the same directions: the paper's before/after comparison."""
    rows = stats.centre[stats.centre >= 0]
    x, y = splits.train.x[margins.indices[rows]], margins.labels[rows]
    model = scored_model(net, cfg).to(resolve_device(cfg.search.device))
    again = scan(model, x, y, directions_of(margins, cfg, splits.input_shape), cfg.search)
    out = torch.full((stats.n_classes,), float("nan"), dtype=torch.float64)
    out[y] = again.margin.double().mean(1)
    return out


def centre_of(margins: Margins, stats: MarginStats) -> Tensor:
    """The mean margin of each class-centre sample of `stats` (rows of the
    original's search) in `margins`, a search of another model on the same
    samples and directions: what `centre_margins` measures, without scanning again."""
    rows = stats.centre[stats.centre >= 0]
    out = torch.full((stats.n_classes,), float("nan"), dtype=torch.float64)
    out[margins.labels[rows]] = margins.margin[rows].double().mean(1)
    return out


def centre_images(splits: DataSplits, margins: Margins, stats: MarginStats) -> Tensor:
    """The class-centre images (training images, input units), one per class that has one."""
    return splits.train.x[margins.indices[stats.centre[stats.centre >= 0]]]


def fl_suite(cfg: FLConfig) -> Suite:
    """The FL paper's attacks with cfg.eval's budgets, scoring the model as the search does."""
    e = cfg.eval
    iterations, prediction = scoring(cfg)
    return fl_paper_suite(e.eps_linf, l2_eps=e.l2_eps, noise_eps=e.noise_eps, noise_sigma=e.noise_sigma,
                          fgsm_grid=e.fgsm_grid, noise_grid=e.noise_grid, noise_worst_of=e.noise_worst_of, n_examples=e.n_examples, seeds=e.seeds, checks=e.checks,
                          check_examples=e.check_examples, batch_size=e.batch_size, n_iterations=iterations,
                          prediction=prediction)


def fl_suites(cfg: FLConfig, split_names: Sequence[str] = ("val", "test")) -> dict[str, Suite]:
    """The suite each named split is evaluated with: fl_suite, with the integrity checks on the first split only."""
    suite = fl_suite(cfg)
    return {name: suite if i == 0 else replace(suite, checks=False) for i, name in enumerate(split_names)}


def evaluate_model(net: FeedbackNet, splits: DataSplits, cfg: FLConfig, *, split_names: Sequence[str] = ("val", "test"),
                   progress: Optional[EvalProgress] = None) -> dict[str, EvalReport]:
    """The FL attack suite on each named split (`fl_suites`)."""
    device = next(net.parameters()).device
    return {name: evaluate(net, getattr(splits, name).to(device), suite, split=name, progress=progress)
            for name, suite in fl_suites(cfg, split_names).items()}


@dataclass(frozen=True)
class VariantOutcome:
    variant: Variant
    margins: Optional[Margins]  # this model's search: the original's samples and directions (searched again after retraining)
    stats: Optional[MarginStats]
    centre_margin: Tensor  # the original class-centre samples' mean margins under this model
    reports: dict[str, EvalReport] = field(default_factory=dict)
    heldout: Optional[Margins] = None  # the same samples along the held-out directions
    heldout_stats: Optional[MarginStats] = None


@dataclass(frozen=True)
class FLRun:
    config: FLConfig
    margins: Margins  # the original model's
    stats: MarginStats
    outcomes: dict[str, VariantOutcome]  # by variant name


def run_feedback_learning(cfg: FLConfig, splits: DataSplits, *, variants: Sequence[str] = ("original", "fl", "reduced_fl"),
                          stage_dir: Optional[Path] = None, margins_after: Optional[bool] = None,
                          split_names: Sequence[str] = ("val", "test"), log: Optional[Log] = None,
                          search_progress: Optional[Callable[[str], Progress]] = None,
                          eval_progress: Optional[EvalProgress] = None) -> FLRun:
    """Train, search, then for each variant (VARIANTS) retrain, search the
    new model again (margins_after) and evaluate. Every model is searched on
    the original model's samples, along its directions (those the generated
    examples were made from) and along held-out directions (`search_again`).
    search_progress(name) gives the progress callback of each search;
    margins_after None follows cfg.eval.margins_after."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    say = log or (lambda _: None)
    sp = search_progress or (lambda _: None)
    after = cfg.eval.margins_after if margins_after is None else margins_after
    say("training the base model")
    net, history = train_base(cfg, splits, stage_dir=stage_dir, log=log)
    say("searching the base model's margins")
    margins = search_margins(net, splits, cfg, stage_dir=stage_dir, progress=sp("original"), log=log)
    stats = margin_stats(margins, splits.n_classes)
    outcomes: dict[str, VariantOutcome] = {}
    for name in variants:
        if name == "original":
            variant = Variant("original", net, history)
        elif name == "continued":
            say("continued: retraining on the original images only (the control)")
            variant = continue_training(net, splits, cfg)
        else:
            say(f"{name}: generating examples and retraining")
            variant = retrain(net, splits, margins, stats, cfg, equal_quotas=name == "reduced_fl")
        outcomes[name] = measure_variant(variant, splits, margins, stats, cfg, stage_dir=stage_dir, margins_after=after,
                                         split_names=split_names, log=log, search_progress=sp, eval_progress=eval_progress)
    return FLRun(cfg, margins, stats, outcomes)


def measure_variant(variant: Variant, splits: DataSplits, margins: Margins, stats: MarginStats, cfg: FLConfig, *,
                    stage_dir: Optional[Path] = None, margins_after: Optional[bool] = None,
                    heldout: Optional[bool] = None, split_names: Sequence[str] = ("val", "test"),
                    log: Optional[Log] = None, search_progress: Optional[Callable[[str], Progress]] = None,
                    eval_progress: Optional[EvalProgress] = None) -> VariantOutcome:
    """Measure one model of a comparison against the original model's search
    (`margins`, `stats`): its margins on the same samples along the same
    directions (margins_after; None: cfg.eval.margins_after) and the held-out
    ones (heldout; None: as margins_after), the class-centre margins, and the
    FL attack suite on each named split. Any model can be measured this way
    (an adversarially trained baseline too)."""
    say = log or (lambda _: None)
    sp = search_progress or (lambda _: None)
    after = cfg.eval.margins_after if margins_after is None else margins_after
    with_heldout = after if heldout is None else heldout
    name = variant.name
    own_margins = own_stats = heldout_margins = heldout_stats = None
    if name == "original":
        own_margins, own_stats, centre = margins, stats, stats.centre_margin
    else:
        if after:
            say(f"{name}: searching the margins (the original's samples and directions)")
            own_margins = search_again(variant.net, splits, margins, cfg, stage_dir=stage_dir, progress=sp(name), log=log)
            own_stats = margin_stats(own_margins, splits.n_classes)
        # The class-centre samples are rows of that search (same samples, directions and settings): read them
        # off it instead of scanning them again; without it, scan just them.
        centre = centre_of(own_margins, stats) if own_margins is not None else centre_margins(variant.net, splits, margins, stats, cfg)
    if with_heldout:
        say(f"{name}: searching along the held-out directions")
        heldout_margins = search_again(variant.net, splits, margins, cfg, heldout=True, stage_dir=stage_dir,
                                       progress=sp(f"{name} (held-out)"), log=log)
        heldout_stats = margin_stats(heldout_margins, splits.n_classes)
    say(f"{name}: evaluating")
    reports = evaluate_model(variant.net, splits, cfg, split_names=split_names, progress=eval_progress)
    return VariantOutcome(variant, own_margins, own_stats, centre, reports, heldout_margins, heldout_stats)
