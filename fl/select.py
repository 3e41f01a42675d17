"""Robustness tiers, per-class quotas and example generation (fl-spec step 4).

Classes sorted by class robustness R_i (descending; ties by class id) fall
into tiers: the top round(high_fraction * c) classes are "high" (quota_high
samples each), the bottom round(low_fraction * c) "low" (quota_low), the
rest "medium" (quota_medium); with a `budget`, the three quotas come from
the budget and two ratios instead (`class_quotas`). Reduced FL
(`equal_quotas`) gives every class the same quota (`equal_quota`). For each
chosen sample, examples are generated along its `directions_per_sample`
smallest-margin flipped directions at uniform (strength_min, strength_max)
x the margin, past the boundary, labelled with the sample's true label. Directions that never flipped have no measured
boundary and are not used; a sample with fewer flipped directions gives
fewer examples (counted in the plan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Sequence

import torch
from torch import Tensor

from cnnf.config import ConfigError, require
from cnnf.data import INPUT_RANGE, ArrayDataset, to_input_units
from fl.config import SelectionConfig
from fl.search import Margins

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
class SelectionPlan:
    order: tuple[int, ...]  # classes by descending R_i
    tier: tuple[str, ...]  # per class: high / medium / low (all "equal" for reduced FL)
    quota: tuple[int, ...]  # per class
    rows: Tensor  # chosen samples (rows of Margins)

    def as_dict(self) -> dict:
        return {"order": list(self.order), "tier": list(self.tier), "quota": list(self.quota), "rows": self.rows.tolist()}


def plan_selection(margins: Margins, class_robustness: Tensor, cfg: SelectionConfig) -> SelectionPlan:
    n_classes = len(class_robustness)
    order = sorted(range(n_classes), key=lambda c: (-float(class_robustness[c]), c))
    if cfg.equal_quotas:
        tier = ("equal",) * n_classes
        quota = (equal_quota(cfg, n_classes),) * n_classes
    else:
        by_rank = class_quotas(cfg, n_classes)
        high, medium, _ = tier_sizes(cfg, n_classes)
        names = ["high"] * high + ["medium"] * medium + ["low"] * (n_classes - high - medium)
        tier_l, quota_l = [""] * n_classes, [0] * n_classes
        for rank, c in enumerate(order):
            tier_l[c], quota_l[c] = names[rank], by_rank[rank]
        tier, quota = tuple(tier_l), tuple(quota_l)
    g = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for c in range(n_classes):
        pool = torch.nonzero(margins.labels == c).flatten()
        if quota[c] > len(pool):
            raise ConfigError("selection", f"class {c} needs {quota[c]} samples but only {len(pool)} were searched")
        rows.append(pool[torch.randperm(len(pool), generator=g)[: quota[c]]])
    return SelectionPlan(tuple(order), tier, quota, torch.cat(rows).sort().values)


def generate(x: Tensor, margins: Margins, directions: Tensor, plan: SelectionPlan, cfg: SelectionConfig,
             clip: bool = False) -> ArrayDataset:
    """Boundary-crossing examples for the plan's samples.

    x: the searched samples (Margins rows, input units); directions: (D, dim)
    the search used. Returns the examples (input units) with the samples'
    true labels.
    """
    g = torch.Generator().manual_seed(cfg.seed + 1)
    signed = margins.signed_directions(directions)
    xs, ys = [], []
    for r in plan.rows.tolist():
        flipped = torch.nonzero(margins.flipped[r]).flatten()
        if len(flipped) == 0:
            continue
        m = margins.margin[r, flipped]
        take = flipped[torch.sort(m, stable=True).indices[: cfg.directions_per_sample]]
        strength = cfg.strength_min + (cfg.strength_max - cfg.strength_min) * torch.rand(len(take), generator=g)
        offset = to_input_units(1.0) * (strength * margins.margin[r, take])
        ex = x[r].reshape(1, -1) + offset[:, None] * signed[take]
        xs.append(ex.clamp(*INPUT_RANGE) if clip else ex)
        ys.append(torch.full((len(take),), int(margins.labels[r]), dtype=torch.long))
    if not xs:
        return ArrayDataset(x[:0].clone(), margins.labels[:0].clone())
    return ArrayDataset(torch.cat(xs).view(-1, *x.shape[1:]), torch.cat(ys))
