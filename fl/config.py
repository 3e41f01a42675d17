"""Typed configuration of a feedback-learning experiment (house style 1).

Frozen dataclasses whose defaults are the paper's MNIST settings
(fl-spec.md). Units: every margin, step and budget is in [0, 1] pixel
units along directions of per-pixel RMS 1 (L2 norm sqrt(d)), so a margin of
0.02 moves each pixel by 0.02 on average; `cnnf.data.to_input_units` turns
them into the [-1, 1] model-input units once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal, Optional, Sequence

from cnnf.catalog import dataset_info
from cnnf.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig, require


CPU_BATCH, GPU_BATCH = 512, 16384


MAX_STEPS = 100_000  # steps per search direction; He et al.'s grids use 25-63

@dataclass(frozen=True)
class SearchConfig:
    """The decision-boundary search (fl-spec step 3, He et al. 2018).

    mode "exact": the linear scan k = 1..max_steps in both signs of every
    direction (Algorithm 1). mode "coarse_to_fine": scan every
    `coarse_factor`-th step, then bisect inside the first flipped bracket; an
    approximation that misses a flip which reverts between two coarse points
    and assumes one crossing inside the bracket.
    """

    n_samples: int = 1500  # searched training samples, stratified over the classes
    n_directions: Optional[int] = None  # random orthogonal directions; None: the input dimension (784 on MNIST)
    step: float = 0.02  # pixel units per step (MNIST)
    # The search range: half the pixel range. The scan visits k * step for
    # k = 1..floor(max_margin / step) (He et al.'s CIFAR-10 grid, step 2/255 and
    # range 0.5, ends at 126/255); a search without a flip counts as max_margin.
    max_margin: float = 0.5
    mode: Literal["exact", "coarse_to_fine"] = "exact"
    coarse_factor: int = 5  # coarse_to_fine: fine steps per coarse step
    correct_only: bool = True  # draw samples from correctly classified training images (Algorithm 1)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the forward passes (an approximation, measured)
    channels_last: bool = True  # memory layout of the batched forward passes (same math, faster convolutions)
    # Clip every search point (and generated example) to the pixel range, as
    # He et al.'s released search does (mnist/gxr3.py, cifar10/gxr3.py), which
    # the paper adopts. False: the unclipped ablation (the perturbation keeps its
    # full length past the pixel range, so more directions flip within range).
    clip: bool = True
    # Points per forward call; None: 512 on a CPU (measured on 2 cores: 2.9x
    # the images/s of 2048, which spills the caches), 16384 on a GPU.
    batch_size: Optional[int] = None
    seed: int = 0  # directions and samples
    # The seed of the held-out directions: a retrained model is also searched
    # along directions its generated examples were not made from (None: seed + 1).
    heldout_seed: Optional[int] = None
    device: str = "auto"

    def __post_init__(self) -> None:
        require(self.heldout_seed is None or self.heldout_seed != self.seed, "heldout_seed",
                f"must differ from search.seed ({self.seed}): held-out directions are another draw")
        require(self.n_samples >= 1, "n_samples", f"must be >= 1, got {self.n_samples}")
        require(self.n_directions is None or self.n_directions >= 1, "n_directions", f"must be >= 1, got {self.n_directions}")
        require(self.step > 0, "step", f"must be > 0, got {self.step}")
        require(self.max_margin >= self.step, "max_margin", f"must be >= step ({self.step}), got {self.max_margin}")
        ratio = self.max_margin / self.step
        require(math.isfinite(ratio) and ratio <= MAX_STEPS, "max_margin",
                f"must be at most {MAX_STEPS} steps of {self.step}, got {self.max_margin} ({ratio:.3g} steps)")
        require(self.coarse_factor >= 2, "coarse_factor", f"must be >= 2, got {self.coarse_factor}")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")

    @property
    def max_steps(self) -> int:
        return int(math.floor(self.max_margin / self.step + 1e-6))  # 1e-6: 0.3 / 0.02 is 14.999...

    @property
    def heldout_directions_seed(self) -> int:
        return self.heldout_seed if self.heldout_seed is not None else self.seed + 1

    def batch_for(self, device_type: str) -> int:
        """The points per forward call on this device type."""
        return self.batch_size if self.batch_size is not None else CPU_BATCH if device_type == "cpu" else GPU_BATCH


@dataclass(frozen=True)
class SelectionConfig:
    """Robustness tiers, per-class sample quotas and generation (fl-spec step 4).

    Classes are sorted by class robustness R_i; the top `high_fraction` of
    them form the high tier ("minimum selection"), the bottom `low_fraction`
    the low tier ("maximum selection"), the rest the medium tier.

    Quotas (chosen samples per class of each tier) are given one of two ways:
    - explicit (`budget` None): `quota_high`, `quota_medium`, `quota_low`
      (the paper's 20 / 100 / 150). They must not grow with robustness:
      quota_high <= quota_medium <= quota_low.
    - a budget and ordered shares: `budget` chosen samples over all classes,
      `medium_ratio` = quota_medium / quota_low and `high_ratio` =
      quota_high / quota_medium, both in [0, 1], so every point of the space
      is monotone and ratios 1 / 1 give equal quotas. The defaults 2/3 and
      0.2 are the paper's ratios (1090 over 10 classes gives 20 / 100 / 150).
      The explicit quota fields are then ignored; `fl.config.class_quotas`
      gives the exact formula and rounding (the total is exactly `budget`).

    `equal_quotas` is reduced FL: no inequality compensation, every class gets
    the same quota: `equal_quota` if set, else by `reduced_size`:
    "equal_total" spreads the FL total evenly (rounded), so both variants
    choose as many samples; "max_quota" gives every class the largest tier
    quota (our reading of the paper's reduced FL, which "employs more
    examples" without compensating the tiers).
    """

    high_fraction: float = 0.2
    low_fraction: float = 0.5
    quota_high: int = 20
    quota_medium: int = 100
    quota_low: int = 150
    directions_per_sample: int = 40  # the smallest-margin flipped directions of each chosen sample
    strength_min: float = 1.5  # generated at uniform(strength_min, strength_max) x the measured margin
    strength_max: float = 2.0
    equal_quotas: bool = False
    equal_quota: Optional[int] = None
    seed: int = 0
    # The budget parametrisation (None: the explicit quotas above). A quota
    # sweep samples the two ratios at a fixed budget, so it compares ways of
    # spreading one number of samples, never "how many" with "how spread".
    budget: Optional[int] = None  # chosen samples over all classes
    medium_ratio: float = 2 / 3  # quota_medium / quota_low (paper: 100 / 150)
    high_ratio: float = 0.2  # quota_high / quota_medium (paper: 20 / 100)
    reduced_size: Literal["equal_total", "max_quota"] = "equal_total"

    def __post_init__(self) -> None:
        for name in ("high_fraction", "low_fraction", "medium_ratio", "high_ratio"):
            v = getattr(self, name)
            require(0.0 <= v <= 1.0, name, f"must be in [0, 1], got {v}")
        require(self.high_fraction + self.low_fraction <= 1.0, "low_fraction",
                f"high_fraction + low_fraction must be <= 1, got {self.high_fraction} + {self.low_fraction}")
        for name in ("quota_high", "quota_medium", "quota_low"):
            v = getattr(self, name)
            require(v >= 0, name, f"must be >= 0, got {v}")
        for lower, upper in (("quota_high", "quota_medium"), ("quota_medium", "quota_low")):
            require(getattr(self, lower) <= getattr(self, upper), lower,
                    f"{lower} ({getattr(self, lower)}) must be <= {upper} ({getattr(self, upper)}): quotas must not grow "
                    "with robustness (quota_high <= quota_medium <= quota_low); to search how samples are spread over "
                    "the tiers, set budget and vary medium_ratio and high_ratio")
        require(self.budget is None or self.budget >= 1, "budget", f"must be >= 1 samples, got {self.budget}")
        require(self.reduced_size in ("equal_total", "max_quota"), "reduced_size",
                f"expected equal_total or max_quota, got {self.reduced_size!r}")
        require(self.equal_quota is None or self.equal_quota >= 1, "equal_quota", f"must be >= 1, got {self.equal_quota}")
        require(self.directions_per_sample >= 1, "directions_per_sample", f"must be >= 1, got {self.directions_per_sample}")
        require(self.strength_min > 0, "strength_min", f"must be > 0, got {self.strength_min}")
        require(self.strength_min <= self.strength_max, "strength_max",
                f"the strength range is empty: strength_min {self.strength_min} > strength_max {self.strength_max}")


# --- tier arithmetic of SelectionConfig (fl-spec step 4) -----------------------
# Module functions of the config rather than of fl.select, so that validating a
# config (FLConfig.__post_init__ -> check_selection) needs no torch and no cycle.

TIERS = ("high", "medium", "low")
RATIO_DENOMINATOR = 10**6  # medium_ratio / high_ratio are read as fractions with at most this denominator


def tier_sizes(cfg: SelectionConfig, n_classes: int) -> tuple[int, int, int]:
    """Classes in the (high, medium, low) tiers."""
    high = int(round(cfg.high_fraction * n_classes))
    low = int(round(cfg.low_fraction * n_classes))
    return high, n_classes - high - low, low


def tier_quotas(cfg: SelectionConfig, n_classes: int) -> tuple[Fraction, Fraction, Fraction]:
    """The exact (unrounded) per-class quotas (high, medium, low) of a budget:
    with tier sizes (n_h, n_m, n_l), r_m = medium_ratio, r_h = high_ratio,

        q_low = budget / (n_l + n_m * r_m + n_h * r_m * r_h),
        q_medium = r_m * q_low,  q_high = r_h * q_medium,

    so n_h q_high + n_m q_medium + n_l q_low = budget. Ratios are read as the
    nearest fraction with a denominator <= 10**6, so 2/3 and 0.2 are exact.
    ConfigError (selection.budget) when no tier can take a share."""
    require(cfg.budget is not None, "selection.budget", "tier quotas from a budget need selection.budget")
    high, medium, low = tier_sizes(cfg, n_classes)
    r_m = Fraction(cfg.medium_ratio).limit_denominator(RATIO_DENOMINATOR)
    r_h = Fraction(cfg.high_ratio).limit_denominator(RATIO_DENOMINATOR)
    shares = low + medium * r_m + high * r_m * r_h
    require(shares > 0, "selection.budget",
            f"no tier takes a share of the budget: {low} low classes, and medium_ratio {cfg.medium_ratio} / high_ratio "
            f"{cfg.high_ratio} give the {medium} medium and {high} high classes nothing")
    q_low = Fraction(cfg.budget) / shares
    return r_h * r_m * q_low, r_m * q_low, q_low


def class_quotas(cfg: SelectionConfig, n_classes: int) -> tuple[int, ...]:
    """FL quotas by rank (most robust class first; high, medium, low tier).

    Explicit quotas (budget None): each tier's quota. With a budget: each
    class's `tier_quotas` rounded down, then the samples those roundings
    dropped (fewer than n_classes) one each to the least robust classes. The
    total is exactly the budget, the quotas never grow with robustness, and
    within a tier they differ by at most one."""
    high, medium, low = tier_sizes(cfg, n_classes)
    if cfg.budget is None:
        return (cfg.quota_high,) * high + (cfg.quota_medium,) * medium + (cfg.quota_low,) * low
    q_high, q_medium, q_low = tier_quotas(cfg, n_classes)
    floors = [math.floor(q) for q in (q_high,) * high + (q_medium,) * medium + (q_low,) * low]
    dropped = cfg.budget - sum(floors)  # the fractional parts' sum: an integer in [0, n_classes)
    return tuple(q + (rank >= n_classes - dropped) for rank, q in enumerate(floors))


def equal_quota(cfg: SelectionConfig, n_classes: int) -> int:
    """Reduced FL's per-class quota: `equal_quota` if set; else, by
    `reduced_size`, the FL total (`class_quotas`: the budget, or the explicit
    quotas' sum) spread evenly, rounded half to even ("equal_total", so the
    total is within n_classes / 2 of FL's), or FL's largest class quota
    ("max_quota": more samples than FL, no compensation)."""
    if cfg.equal_quota is not None:
        return cfg.equal_quota
    quotas = class_quotas(cfg, n_classes)
    if cfg.reduced_size == "max_quota":
        return max(quotas)
    return int(round(sum(quotas) / n_classes))


def reduced_at_budget(cfg: SelectionConfig, n_classes: int) -> SelectionConfig:
    """Reduced FL at the same budget as cfg's FL: equal quotas whose total is
    FL's ("equal_total", ignoring `equal_quota` and `reduced_size`), with cfg's
    generation settings and seed. Every setting that cannot change its plan or
    examples (tiers, ratios, explicit quotas) is reset, so configs that
    differ only in how FL spreads one budget give the same baseline config."""
    q = equal_quota(replace(cfg, equal_quota=None, reduced_size="equal_total"), n_classes)
    quotas: dict = {"equal_quota": q} if q >= 1 else {"quota_high": 0, "quota_medium": 0, "quota_low": 0}
    return SelectionConfig(equal_quotas=True, directions_per_sample=cfg.directions_per_sample, strength_min=cfg.strength_min,
                           strength_max=cfg.strength_max, seed=cfg.seed, **quotas)


def check_selection(cfg: SelectionConfig, n_classes: int, samples_per_class: Sequence[int]) -> None:
    """Reject settings no run could satisfy, before any work starts: an empty
    tier that has a quota, a budget no tier can take, a quota larger than the
    searched samples of the smallest class."""
    high, medium, low = tier_sizes(cfg, n_classes)
    require(high + low <= n_classes, "selection.low_fraction", f"high and low tiers overlap with {n_classes} classes")
    available = min(samples_per_class)
    exact = tier_quotas(cfg, n_classes) if cfg.budget is not None else None
    if cfg.equal_quotas:
        q = equal_quota(cfg, n_classes)
        require(q <= available, "selection.equal_quota",
                f"quota {q} exceeds the {available} searched samples per class (search.n_samples)")
        return
    for name, size, frac in (("high", high, "high_fraction"), ("low", low, "low_fraction")):
        quota = getattr(cfg, f"quota_{name}") if exact is None else exact[TIERS.index(name)]
        require(size > 0 or quota == 0 or getattr(cfg, frac) == 0, f"selection.{frac}",
                f"the {name} tier is empty: {getattr(cfg, frac)} of {n_classes} classes rounds to 0 classes")
    if exact is not None:
        largest = max(class_quotas(cfg, n_classes))
        require(largest <= available, "selection.budget",
                f"{cfg.budget} samples with medium_ratio {cfg.medium_ratio} and high_ratio {cfg.high_ratio} give a class "
                f"{largest} samples, more than the {available} searched per class (search.n_samples); lower the budget "
                "or raise the ratios")
        return
    for name, size in zip(TIERS, (high, medium, low)):
        quota = getattr(cfg, f"quota_{name}")
        require(size == 0 or quota <= available, f"selection.quota_{name}",
                f"quota {quota} exceeds the {available} searched samples per class (search.n_samples)")


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining from the trained base model on original + generated data
    (fl-spec step 5); unset fields keep the base training's values."""

    epochs: int = 5
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    seed: int = 1

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.lr is None or self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class FLEvalConfig:
    """The paper's Table III attacks (`cnnf.suite.fl_paper_suite`) and an
    FGSM accuracy-vs-strength curve. The paper tuned strengths per dataset
    without publishing them; these are MNIST-scale defaults in pixel units."""

    eps_linf: float = 0.1  # FGSM, PGD, BIM, MIM
    l2_eps: Optional[float] = 1.5  # CW-L2 and DeepFool budget (L2 over the image); None: unbounded
    noise_eps: float = 0.3  # uniform noise half-width
    noise_sigma: float = 0.3  # Gaussian noise standard deviation
    # Noise is scored as the paper reports it: accuracy under one draw per image,
    # at noise_eps / noise_sigma and along this grid of strengths (a curve each).
    noise_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    # The stronger worst-of-k noise metric, reported apart (*_noise_worst): an
    # image is broken if any of k draws fools it. None: not run.
    noise_worst_of: Optional[int] = 100
    # The paper's Fig. 3 goes to 0.5 (FL is claimed to overtake Madry above ~0.4).
    fgsm_grid: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    n_examples: Optional[int] = 1000  # first n of each split; None: all
    seeds: tuple[int, ...] = (0,)
    checks: bool = True
    check_examples: int = 100
    batch_size: int = 500
    margins_after: bool = True  # search the retrained model again for R and R_i after FL (one more full search)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fgsm_grid", tuple(float(e) for e in self.fgsm_grid))
        object.__setattr__(self, "noise_grid", tuple(float(e) for e in self.noise_grid))
        require(all(0.0 <= e <= 1.0 for e in self.noise_grid), "noise_grid", f"strengths must be in [0, 1] pixel units, got {list(self.noise_grid)}")
        require(self.noise_worst_of is None or self.noise_worst_of >= 2, "noise_worst_of",
                f"must be >= 2 draws (one draw is the single-draw metric) or null, got {self.noise_worst_of}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        require(0.0 <= self.eps_linf <= 1.0, "eps_linf", f"must be in [0, 1] pixel units, got {self.eps_linf}")
        require(self.l2_eps is None or self.l2_eps > 0, "l2_eps", f"must be > 0, got {self.l2_eps}")
        require(0.0 <= self.noise_eps <= 1.0, "noise_eps", f"must be in [0, 1] pixel units, got {self.noise_eps}")
        require(self.noise_sigma >= 0, "noise_sigma", f"must be >= 0, got {self.noise_sigma}")
        require(all(0.0 <= e <= 1.0 for e in self.fgsm_grid), "fgsm_grid", f"budgets must be in [0, 1], got {list(self.fgsm_grid)}")
        require(self.n_examples is None or self.n_examples >= 1, "n_examples", f"must be positive, got {self.n_examples}")
        require(len(self.seeds) >= 1, "seeds", "at least one seed is needed")
        require(self.check_examples >= 1, "check_examples", f"must be positive, got {self.check_examples}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


def _fl_data() -> DataConfig:
    return DataConfig(dataset="mnist")


def _fl_model() -> ModelConfig:
    return ModelConfig(arch="cnn_mnist_small")


def _fl_train() -> TrainConfig:
    return TrainConfig(epochs=10, n_iterations=0)


@dataclass(frozen=True)
class FLConfig:
    """One feedback-learning run: train, search, select, generate, retrain,
    evaluate; the `base` of an `fl` sweep."""

    data: DataConfig = field(default_factory=_fl_data)
    model: ModelConfig = field(default_factory=_fl_model)
    train: TrainConfig = field(default_factory=_fl_train)
    search: SearchConfig = field(default_factory=SearchConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    eval: FLEvalConfig = field(default_factory=FLEvalConfig)

    def __post_init__(self) -> None:
        self.base_experiment()  # its errors name model.arch, train.n_iterations, ... as here
        info = dataset_info(self.data.dataset)
        dim = info.input_shape[0] * info.input_shape[1] * info.input_shape[2]
        require(self.search.n_directions is None or self.search.n_directions <= dim, "search.n_directions",
                f"at most the input dimension {dim} orthogonal directions exist, got {self.search.n_directions}")
        check_selection(self.selection, info.n_classes, samples_per_class(self.search.n_samples, info.n_classes))

    def base_experiment(self) -> ExperimentConfig:
        """The base model's training as a CNN-F experiment (cnnf.train.fit)."""
        return ExperimentConfig(data=self.data, model=self.model, train=self.train, eval=EvalConfig(prediction="avg"))

    def retrain_experiment(self) -> ExperimentConfig:
        r = self.retrain
        train = replace(self.train, epochs=r.epochs, seed=r.seed, lr=r.lr if r.lr is not None else self.train.lr,
                        batch_size=r.batch_size if r.batch_size is not None else self.train.batch_size)
        return replace(self.base_experiment(), train=train)

    @property
    def n_directions(self) -> int:
        shape = dataset_info(self.data.dataset).input_shape
        return self.search.n_directions or shape[0] * shape[1] * shape[2]


def samples_per_class(n_samples: int, n_classes: int) -> tuple[int, ...]:
    """How many searched samples each class gets: an equal share, the
    remainder to the lowest classes."""
    base, extra = divmod(n_samples, n_classes)
    return tuple(base + (1 if c < extra else 0) for c in range(n_classes))
