"""Robustness tiers, per-class quotas and example generation (fl-spec step 4).

Classes sorted by class robustness R_i (descending; ties by class id) fall
into tiers: the top round(high_fraction * c) classes are "high" (quota_high
samples each), the bottom round(low_fraction * c) "low" (quota_low), the
rest "medium" (quota_medium). Reduced FL (`equal_quotas`) gives every class
the same quota. For each chosen sample, examples are generated along its
`directions_per_sample` smallest-margin flipped directions at uniform
(strength_min, strength_max) x the margin, past the boundary, labelled with
the sample's true label. Directions that never flipped have no measured
boundary and are not used; a sample with fewer flipped directions gives
fewer examples (counted in the plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from cnnf.config import ConfigError, require
from cnnf.data import INPUT_RANGE, ArrayDataset, to_input_units
from fl.config import SelectionConfig
from fl.search import Margins

TIERS = ("high", "medium", "low")


def tier_sizes(cfg: SelectionConfig, n_classes: int) -> tuple[int, int, int]:
    """Classes in the (high, medium, low) tiers."""
    high = int(round(cfg.high_fraction * n_classes))
    low = int(round(cfg.low_fraction * n_classes))
    return high, n_classes - high - low, low


def class_quotas(cfg: SelectionConfig, n_classes: int) -> tuple[int, ...]:
    """FL quotas in tier order (high classes first): what equal quotas default to."""
    high, medium, low = tier_sizes(cfg, n_classes)
    return (cfg.quota_high,) * high + (cfg.quota_medium,) * medium + (cfg.quota_low,) * low


def equal_quota(cfg: SelectionConfig, n_classes: int) -> int:
    """Reduced FL's per-class quota: set, or the FL total spread evenly (rounded)."""
    return cfg.equal_quota if cfg.equal_quota is not None else int(round(sum(class_quotas(cfg, n_classes)) / n_classes))


def check_selection(cfg: SelectionConfig, n_classes: int, samples_per_class: Sequence[int]) -> None:
    """Reject settings no run could satisfy, before any work starts: an empty
    tier that has a quota, a quota larger than the searched samples of the
    smallest class."""
    high, medium, low = tier_sizes(cfg, n_classes)
    require(high + low <= n_classes, "selection.low_fraction", f"high and low tiers overlap with {n_classes} classes")
    available = min(samples_per_class)
    if cfg.equal_quotas:
        q = equal_quota(cfg, n_classes)
        require(q <= available, "selection.equal_quota",
                f"quota {q} exceeds the {available} searched samples per class (search.n_samples)")
        return
    for name, size, frac in (("high", high, "high_fraction"), ("low", low, "low_fraction")):
        quota = getattr(cfg, f"quota_{name}")
        require(size > 0 or quota == 0 or getattr(cfg, frac) == 0, f"selection.{frac}",
                f"the {name} tier is empty: {getattr(cfg, frac)} of {n_classes} classes rounds to 0 classes")
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
