"""Margin statistics (fl-spec "Statistics", paper Table I and Fig. 2).

M[i, j]: mean margin over the searches that start in class i and end in
adjacent class j; N[i, j]: their count. R = sum over i != j of M[i, j],
where a pair (i, j) with no search ending in j counts as the search range
(no boundary towards j was found within it): the paper's "searches with no
adjacent class count as the maximum search range". R_i = (sum_j M[j, i]
N[j, i]) / (sum_j M[i, j] N[i, j]): the total margin of searches that end
in class i over that of searches that start in it; inf when no search from
class i flipped (nothing moved it within range).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fl.search import NA, Margins


@dataclass(frozen=True)
class MarginStats:
    n_classes: int
    max_margin: float
    mean: Tensor  # (c, c) float64, NaN where counts == 0
    counts: Tensor  # (c, c) int64
    na_counts: Tensor  # (c,) searches from class i that never flipped
    robustness: float  # R
    class_robustness: Tensor  # (c,) R_i
    adjacent_share: Tensor  # (c + 1,) share of all searches ending in class j; the last entry is N/A
    centre: Tensor  # (c,) row (in Margins) of the class-centre sample: the largest mean margin of its class
    centre_margin: Tensor  # (c,) that sample's mean margin over all its searches (N/A at the range)
    n_samples: int = 0  # searched samples
    n_wrong: int = 0  # of them, misclassified by the model (margin 0 in every direction: Margins.wrong)

    def as_dict(self) -> dict:
        def plain(t: Tensor) -> list:
            return [None if v != v else v for v in t.tolist()] if t.dim() == 1 else [plain(r) for r in t]

        return {"n_classes": self.n_classes, "max_margin": self.max_margin, "R": self.robustness,
                "R_i": [v if v != float("inf") else "inf" for v in self.class_robustness.tolist()],
                "mean": plain(self.mean), "counts": self.counts.tolist(), "na_counts": self.na_counts.tolist(),
                "adjacent_share": self.adjacent_share.tolist(), "centre": self.centre.tolist(),
                "centre_margin": self.centre_margin.tolist(), "n_samples": self.n_samples, "n_wrong": self.n_wrong}


def margin_stats(margins: Margins, n_classes: int) -> MarginStats:
    y = margins.labels.long()
    origin = y[:, None].expand_as(margins.adjacent).reshape(-1)
    adj = margins.adjacent.reshape(-1)
    m = margins.margin.double().reshape(-1)
    hit = adj != NA
    flat = origin[hit] * n_classes + adj[hit]
    counts = torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)
    sums = torch.bincount(flat, weights=m[hit], minlength=n_classes * n_classes).view(n_classes, n_classes)
    mean = torch.where(counts > 0, sums / counts.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    off_diag = ~torch.eye(n_classes, dtype=torch.bool)
    filled = torch.where(counts > 0, mean, torch.tensor(margins.max_margin, dtype=torch.float64))
    robustness = float(filled[off_diag].sum())
    into, out_of = sums.sum(0), sums.sum(1)  # total margin ending in / starting from class i
    class_r = torch.where(out_of > 0, into / out_of.clamp(min=1e-300), torch.tensor(float("inf"), dtype=torch.float64))
    na_counts = torch.bincount(origin[~hit], minlength=n_classes)
    ends = torch.cat([counts.sum(0), na_counts.sum().view(1)]).double()
    share = ends / max(len(adj), 1)
    per_sample = margins.margin.double().mean(1)
    centre = torch.full((n_classes,), -1, dtype=torch.long)
    centre_margin = torch.full((n_classes,), float("nan"), dtype=torch.float64)
    for c in range(n_classes):
        rows = torch.nonzero(y == c).flatten()
        if len(rows):
            best = rows[per_sample[rows].argmax()]
            centre[c], centre_margin[c] = best, per_sample[best]
    return MarginStats(n_classes, margins.max_margin, mean, counts, na_counts, robustness, class_r, share, centre,
                       centre_margin, margins.n_samples, margins.n_wrong)


def r_spread(class_robustness: Tensor) -> float:
    """How unequal the classes are: the standard deviation (over classes, in
    decades) of log10 R_i, over the classes with a finite positive R_i. 0: all
    classes equally robust; 1: R_i typically a factor 10 from their geometric
    mean. A class nothing reaches (R_i = 0) or that never flipped (inf) is left
    out; NaN when no class is left. (A max/min ratio is dominated by one
    nearly-unreached class on small searches.)"""
    r = class_robustness.double()
    finite = r[torch.isfinite(r) & (r > 0)]
    return float(finite.log10().std(unbiased=False)) if len(finite) else float("nan")
