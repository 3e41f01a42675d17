"""Robustness tiers applied to a search: the per-class plan and example
generation (fl-spec step 4).

The tier arithmetic (tier sizes, quotas from explicit numbers or a budget
and two ratios, reduced FL's equal quota, the checks) belongs to the config
(`fl.config.class_quotas` and its neighbours), so validating a config needs
neither torch nor this module. Here classes sorted by class robustness R_i
(descending; ties by class id) get their tier's quota, and the plan draws
that many searched samples per class. For each chosen sample, examples are
generated along its `directions_per_sample` smallest-margin flipped
directions at uniform (strength_min, strength_max) x the margin, past the
boundary, labelled with the sample's true label. Directions that never
flipped have no measured boundary and are not used; a sample with fewer
flipped directions gives fewer examples (counted in the plan).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cnnf.config import ConfigError
from cnnf.data import INPUT_RANGE, ArrayDataset, to_input_units
from fl.config import SelectionConfig, class_quotas, equal_quota, tier_sizes
from fl.search import Margins

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
